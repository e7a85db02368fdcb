"""Cold-start SFT: masking, a short run, export, the shipped checkpoint's quality."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from observe_r1.config import load_config
from observe_r1.data.dataset import load_samples
from observe_r1.recipes.sft import reference_rollout, sft, with_responses

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "cold_start_small.yaml"


def test_reference_rollout_holds_the_response_tokens_and_the_end_token(encoder, synth_dir):
    samples = load_samples(synth_dir / "train.jsonl")[:3]
    r = reference_rollout(samples, encoder, "", "solution")
    eos = encoder.tokenizer.eos_token_id
    for i, s in enumerate(samples):
        ids = r.completion_ids[i, : r.lengths[i]].tolist()
        assert ids[-1] == eos and encoder.tokenizer.decode(ids[:-1]) == s.metadata["solution"]
        assert r.completion_mask[i].sum() == r.lengths[i]
    assert r.prompt_index == [0, 1, 2]


def test_rows_without_a_response_are_skipped(synth_dir, caplog):
    samples = load_samples(synth_dir / "train.jsonl")[:4]
    samples[1].metadata.pop("solution")
    assert len(with_responses(samples, "solution")) == 3 and "1 of 4 samples" in caplog.text
    with pytest.raises(ValueError, match="no sample has a reference response in column `reasoning`"):
        with_responses(samples, "reasoning")


def short_run(out, *extra):
    overrides = ["model.tiny_size=tiny", "data.synth_train=64", "data.synth_test=8", "optim.max_steps=6",
                 "optim.mini_batch_size=8", "optim.micro_batch_size=4", "logging.eval_every=0",
                 "rollout.max_new_tokens=16", f"logging.output_dir={out}", *extra]  # fmt: skip
    return load_config(CONFIG, overrides)


def test_short_sft_learns_checkpoints_and_exports(tmp_path):
    run = short_run(tmp_path / "run", "optim.lr=3e-3", "logging.eval_every=3", "checkpoint.best_metric=eval/length_mean",
                    "checkpoint.best_mode=min")  # fmt: skip
    out = sft(run, export=tmp_path / "export")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["sft/loss"] for r in rows if "sft/loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5
    assert "eval/accuracy" in rows[-1]
    evals = {r["step"] + 1: r["eval/length_mean"] for r in rows if "eval/length_mean" in r}
    best = json.loads((out / "checkpoints" / "best" / "best.json").read_text())
    assert (
        sorted(evals) == [3, 6]
        and best["value"] == min(evals.values())
        and evals[best["step"]] == best["value"]
    )
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "export")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert (tmp_path / "export" / "tokenizer.json").is_file() and (
        tmp_path / "export" / "preprocessor_config.json"
    ).is_file()


def test_sft_refuses_the_online_sampler(tmp_path):
    with pytest.raises(ValueError, match="has none"):
        sft(short_run(tmp_path / "run", "data.sampler=online"))


def test_shipped_cold_start_has_the_layout_and_partial_skill(tmp_path):
    from observe_r1.recipes.demo import TASKS
    from observe_r1.recipes.evaluate import evaluate_checkpoint
    from observe_r1.toy.synth import write_dataset
    from observe_r1.training.setup import cold_start_path

    paths = write_dataset(tmp_path, train=0, test=48, seed=777, levels=TASKS["synth"].levels)
    # no system prompt given: the checkpoint's observe_r1.json says it was trained with "none"
    metrics, _ = evaluate_checkpoint(cold_start_path(), [str(paths["test"])], None, 160, 48)
    assert metrics["format_rate"] >= 0.9
    assert 0.15 <= metrics["accuracy"] <= 0.75  # partial skill on the demo's questions: room for RL


# Recorded from the shortened command below on this project's machine kind (2-core CPU, torch 2.13.0,
# 2026-11-21): the cold-start recipe still learns at the speed it did when the shipped checkpoint was made.
SHORT = ["optim.max_steps=40", "data.synth_train=1280", "data.synth_test=32", "logging.eval_every=0",
         "checkpoint.every=1000", "rollout.max_new_tokens=160"]  # fmt: skip
GOLDEN_FINAL_LOSS = 1.6634  # `sft/loss` at step 40 (it starts near 6.3; the full run ends at 0.166)


def test_cold_start_command_reproduces_its_quality(tmp_path):
    out = sft(load_config(CONFIG, [*SHORT, f"logging.output_dir={tmp_path}"]))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["sft/loss"] for r in rows if "sft/loss" in r]
    assert len(losses) == 40 and losses[0] > 5.5
    assert losses[-1] == pytest.approx(GOLDEN_FINAL_LOSS, rel=0.1)
    assert "eval/format_rate" in rows[-1]  # the held-out evaluation ran
