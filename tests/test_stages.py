"""Staged runs (observe_r1.recipes.stages): each stage starts from the previous stage's model with its own
overrides; a run stopped inside a stage resumes in that stage at that step."""

import json

import yaml

from observe_r1 import GRPOConfig, GRPOTrainer

STAGES = (
    "stages=[{name: cold, recipe: sft, steps: 2},"
    " {name: short, steps: 1, overrides: [rollout.max_new_tokens=12, rollout.n=2]},"
    " {name: long, steps: 2, overrides: [rollout.max_new_tokens=24, rollout.n=4, optim.warmup_ratio=0.9]}]"
)


def history(folder):
    """The training steps' rows (an evaluation row after the last step is left out)."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "perf/step_s" in r]


def test_stages_chain_models_and_resume_inside_a_stage(tmp_path):
    config = GRPOConfig.load("configs/tiny_cpu.yaml", [f"logging.output_dir={tmp_path}", STAGES])
    calls = []

    def stop_in_the_third_stage(step, metrics):
        calls.append(step)
        return len(calls) == 4  # sft 0, 1; short 0; long 0 -> stop

    GRPOTrainer(config, callbacks=[stop_in_the_third_stage]).train()
    cold, short, long = (tmp_path / f"stage-{k}-{n}" for k, n in enumerate(("cold", "short", "long")))
    assert (
        (cold / "stage.json").is_file()
        and (short / "stage.json").is_file()
        and not (long / "stage.json").exists()
    )
    assert [r["step"] for r in history(long)] == [0]
    done_before = (short / "metrics.jsonl").stat().st_mtime_ns

    GRPOTrainer(config).train()  # the same run again: stage 3 resumes at step 1
    assert (short / "metrics.jsonl").stat().st_mtime_ns == done_before  # finished stages are not rerun
    assert [r["step"] for r in history(long)] == [0, 1] and (long / "stage.json").is_file()

    short_cfg = yaml.safe_load((short / "config.yaml").read_text())
    long_cfg = yaml.safe_load((long / "config.yaml").read_text())
    assert short_cfg["model"]["path"] == str(cold / "model") and short_cfg["rollout"]["n"] == 2
    assert long_cfg["model"]["path"] == json.loads((short / "stage.json").read_text())["model"]
    assert long_cfg["model"]["path"].endswith("checkpoints/step-000001") and long_cfg["rollout"]["n"] == 4
    assert long_cfg["stages"] == [] and short_cfg["rollout"]["max_new_tokens"] == 12
    lr = [r["optim/lr"] for r in history(long)]
    assert lr[0] < config.optim.lr  # the learning rate warms up again in the new stage
    assert max(r["response/length_max"] for r in history(short)) <= 12


def test_a_bad_stage_override_is_refused_at_load():
    import pytest

    from observe_r1.config import ConfigError

    with pytest.raises(ConfigError, match=r"stages\[1\] \(grpo\): unknown key rollout.size"):
        GRPOConfig.load("configs/tiny_cpu.yaml", ["stages=[{recipe: sft}, {overrides: [rollout.size=2]}]"])
