"""The preference cold start (`observe-r1 dpo`) and rejection-sampling fine-tuning (`observe-r1 rft`) on the
shipped cold-start checkpoint, which answers some synthetic counting questions correctly."""

import json
import math
import re

from observe_r1.cli import main
from observe_r1.rewards.accuracy import accuracy_reward
from observe_r1.rewards.format import format_reward

COLD = "src/observe_r1/assets/cold_start_small"
SMALL = [f"model.path={COLD}", "data.system_prompt=none", "data.synth_train=16", "data.synth_test=8", "rollout.n=4",
         "rollout.prompts_per_step=8", "rollout.max_new_tokens=160", "optim.mini_batch_size=4",
         "optim.micro_batch_size=2", "optim.max_steps=2"]  # fmt: skip


def words(text):
    return re.sub(r"</?(?:observe|think|answer|look|reason|result)>", " ", text).split()


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dpo_pairs_differ_in_format_only_and_the_policy_learns_the_preference(tmp_path):
    out = tmp_path / "dpo"
    assert main(["dpo", "configs/tiny_cpu.yaml", *SMALL, "--output-dir", str(out)]) == 0
    pairs = rows(out / "pairs.jsonl")
    answers = {r["id"]: r["answer"] for r in rows(out / "data" / "train.jsonl")}
    assert pairs
    for pair in pairs:
        assert (
            accuracy_reward(pair["chosen"], answers[pair["id"]]) == 1.0
            and format_reward(pair["chosen"]) == 1.0
        )
        assert format_reward(pair["rejected"]) == 0.0
        assert words(pair["rejected"]) == words(pair["chosen"])  # the same text, the tags renamed or removed
    first, second = [r for r in rows(out / "metrics.jsonl") if "dpo/loss" in r]
    assert math.isclose(first["dpo/loss"], math.log(2), rel_tol=1e-4)  # the policy starts as the reference
    assert second["dpo/reward_accuracy"] > 0.5 and second["dpo/loss"] < first["dpo/loss"]
    assert (out / "model" / "model.safetensors").is_file() and "# DPO run" in (out / "report.md").read_text()


def test_rft_rounds_keep_correct_responses_and_report_each_round(tmp_path):
    out = tmp_path / "rft"
    assert main(["rft", "configs/tiny_cpu.yaml", *SMALL, "rft.rounds=2", "--output-dir", str(out)]) == 0
    rounds = rows(out / "rounds.jsonl")
    assert [r["step"] for r in rounds] == [0, 1] and all(r["rft/kept"] > 0 for r in rounds)
    assert all(0 < r["rft/sampled_accuracy"] < 1 and "eval/accuracy" in r for r in rounds)
    kept = rows(out / "round-0" / "data" / "train.jsonl") if (out / "round-0" / "data").exists() else []
    assert not kept  # the round's rows came from memory, not files
    config = (out / "round-1" / "config.yaml").read_text()
    assert f"path: {out / 'round-0' / 'model'}" in config and "response_column: rft_response" in config
    report = (out / "report.md").read_text()
    assert report.startswith("# Rejection-sampling fine-tuning") and "| rft/sampled_accuracy |" in report
    mtime = (out / "round-0" / "metrics.jsonl").stat().st_mtime_ns
    assert main(["rft", "configs/tiny_cpu.yaml", *SMALL, "rft.rounds=3", "--output-dir", str(out)]) == 0
    assert (out / "round-0" / "metrics.jsonl").stat().st_mtime_ns == mtime  # finished rounds are kept
    assert [r["step"] for r in rows(out / "rounds.jsonl")] == [0, 1, 2]
