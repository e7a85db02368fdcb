"""The Python API (observe_r1.recipes.api): the notebook-style example, in-memory datasets, reward callables,
callbacks that stop a run (and the resume after), and the checks that run before anything is written."""

import json
import os
from pathlib import Path

import pytest
from examples import python_api

from observe_r1 import GRPOConfig, GRPOTrainer, SFTTrainer
from observe_r1.cli import main
from observe_r1.config import ConfigError


def history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_python_api_example_runs(tmp_path):
    out, seen = python_api.main(tmp_path / "run")
    assert [m["step"] for m in seen] == [0, 1, 2]
    assert all("reward/mentions_red/mean" in m for m in seen)  # the callable, scored in worker processes
    rows = history(out)
    assert [r["step"] for r in rows if "accuracy" in r] == [0, 1, 2] and any(
        "eval/accuracy" in r for r in rows
    )
    assert (out / "checkpoints" / "step-000003" / "model.safetensors").is_file()  # the CLI's checkpoints
    assert "mentions_red" in (out / "config.yaml").read_text()


def test_a_callback_stops_the_run_and_the_same_trainer_resumes_it(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = datasets.Dataset.from_list(python_api.counting_rows(16))  # a datasets.Dataset in memory
    config = GRPOConfig.load("configs/tiny_cpu.yaml", [f"logging.output_dir={tmp_path}", "data.test=[]"])
    log = tmp_path / "calls.txt"

    def says_four(completions, **kwargs):  # a closure: scored in a fork of this process, under the time bound
        with log.open("a") as f:
            f.write(f"{os.getpid()} {len(completions)}\n")
        return [float("4" in c) for c in completions]

    def stop_after_first(step, metrics):
        return step == 0

    def trainer(callbacks):
        return GRPOTrainer(
            config, train_dataset=rows, reward_funcs=["accuracy", (says_four, 0.1)], callbacks=callbacks
        )

    trainer([stop_after_first]).train()
    assert [r["step"] for r in history(tmp_path)] == [0]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step")] == [
        "step-000001"
    ]
    calls = [line.split() for line in log.read_text().splitlines()]
    assert calls and {n for _, n in calls} == {"4"}  # once per group of n=4
    assert str(os.getpid()) not in {pid for pid, _ in calls}  # never in the trainer's process
    trainer([]).train()
    assert [r["step"] for r in history(tmp_path)] == [0, 1, 2]


def test_reward_funcs_replace_the_terms_and_are_checked(tmp_path):
    config = GRPOConfig.load("configs/tiny_cpu.yaml", [f"logging.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="reward.correct_term: 'accuracy' must name one of reward.terms"):
        GRPOTrainer(config, reward_funcs=[python_api.mentions_red])
    with pytest.raises(ConfigError, match="not a callable"):
        GRPOTrainer(config, reward_funcs=[42])
    trainer = GRPOTrainer(config, reward_funcs=["accuracy", (python_api.mentions_red, 0.3)])
    assert [(t.name, t.weight) for t in trainer.config.reward.terms] == [
        ("accuracy", 1.0),
        ("mentions_red", 0.3),
    ]


def test_sft_trainer_from_rows(tmp_path):
    rows = python_api.counting_rows(8)
    for row in rows:
        row["solution"] = (
            f"<observe>red squares</observe><think>count</think><answer>{row['answer']}</answer>"
        )
    config = GRPOConfig.load("configs/tiny_cpu.yaml", [f"logging.output_dir={tmp_path}", "optim.max_steps=2",
                                                       "data.test=[]"])  # fmt: skip
    SFTTrainer(config, train_dataset=rows).train(export=tmp_path / "exported")
    assert [r["step"] for r in history(tmp_path)] == [0, 1] and (
        tmp_path / "exported" / "config.json"
    ).is_file()


def test_a_missing_model_is_one_clear_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["train", "configs/tiny_cpu.yaml", "model.path=Qwen/Qwen2.5-VL-3B-Instruct", "--output-dir", str(out)]
    )
    err = capsys.readouterr().out
    assert (
        code == 2
        and "model.path: no model at Qwen/Qwen2.5-VL-3B-Instruct" in err
        and "huggingface-cli download" in err
    )
    assert "Traceback" not in err and not out.exists()


def test_reward_plugins_are_checked_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "configs/tiny_cpu.yaml", "reward.terms=[{name: accuracy}, {name: missing.py:fn}]",
                 "--output-dir", str(out)])  # fmt: skip
    assert code == 2 and "file missing.py not found" in capsys.readouterr().out and not out.exists()


def test_the_paper_config_says_its_dataset_is_not_shipped(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "run"
    code = main(
        ["train", "configs/observe_r1_qwen2_5_vl_3b.yaml", f"model.path={model}", "--output-dir", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 2 and "data.train: dataset not found: data/neuraladder/train.jsonl" in printed
    assert "observe-r1 ladder build" in printed and not out.exists()
    assert "Not shipped" in Path("configs/observe_r1_qwen2_5_vl_3b.yaml").read_text()
