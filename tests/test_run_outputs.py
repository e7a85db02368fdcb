"""What a run shows: report.md with its plot for train and sft, sampled completions in TensorBoard and in a
wandb table, the wandb settings, and `observe-r1 eval` on a LoRA checkpoint."""

import json
import sys
import types

from observe_r1.cli import main

TINY = "configs/tiny_cpu.yaml"


class FakeWandb(types.ModuleType):
    """Records what the tracker asks of wandb (no account, no network)."""

    def __init__(self):
        super().__init__("wandb")
        self.init_kwargs, self.logged = None, []
        fake = self

        class Run:
            def log(self, data, step=None):
                fake.logged.append((step, data))

            def finish(self):
                pass

        self._run = Run

    def init(self, **kwargs):
        self.init_kwargs = kwargs
        return self._run()

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data


def test_train_logs_completions_writes_a_report_and_uses_the_wandb_settings(tmp_path, monkeypatch):
    wandb = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    out = tmp_path / "run"
    assert main(["train", TINY, "--output-dir", str(out), "logging.log_completions_every=2", "logging.log_completions=3",
                 "logging.wandb=true", "logging.wandb_project=geo", "logging.wandb_entity=lab",
                 "logging.wandb_run_name=try-1", "logging.wandb_tags=[tiny, cpu]"]) == 0  # fmt: skip
    init = wandb.init_kwargs
    assert (init["project"], init["entity"], init["name"], init["tags"]) == (
        "geo",
        "lab",
        "try-1",
        ["tiny", "cpu"],
    )
    tables = [(step, d["completions"]) for step, d in wandb.logged if "completions" in d]
    assert [step for step, _ in tables] == [0, 2]
    table = tables[0][1]
    assert len(table.data) == 3 and {"response", "answer", "reward", "reward/accuracy"} <= set(table.columns)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    texts = events.Tensors("completions/text_summary")
    assert [t.step for t in texts] == [0, 2]
    assert "| id | answer | response |" in texts[0].tensor_proto.string_val[0].decode()

    report = (out / "report.md").read_text()
    assert report.startswith("# GRPO run") and "![training](training.png)" in report
    assert "| accuracy |" in report and "## Evaluation at step" in report and "step-000003" in report
    assert (out / "training.png").stat().st_size > 1000


def test_sft_writes_the_same_report(tmp_path):
    out = tmp_path / "sft"
    assert main(["sft", TINY, "--output-dir", str(out), "optim.max_steps=2"]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith("# SFT run") and "| sft/loss |" in report and (out / "training.png").is_file()


def test_eval_accepts_a_lora_checkpoint(tmp_path, capsys):
    out = tmp_path / "lora"
    assert main(["train", TINY, "--output-dir", str(out), "model.lora_rank=4", "optim.max_steps=1",
                 "logging.log_completions_every=0"]) == 0  # fmt: skip
    checkpoint = out / "checkpoints" / "step-000001"
    assert (checkpoint / "adapter_config.json").is_file() and not (checkpoint / "config.json").exists()
    args = ["eval", "--model", str(checkpoint), "--data", str(out / "data" / "test.jsonl"), "--out",
            str(tmp_path / "eval"), "--max-new-tokens", "8", "--limit", "4"]  # fmt: skip
    assert main(args) == 0
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]["count"] == 4
    moved = tmp_path / "moved"
    (out / "base-model").rename(moved)  # the base is found through --base-model when it moved
    assert main(args) == 2 and "pass --base-model" in capsys.readouterr().out
    assert main([*args, "--base-model", str(moved)]) == 0
