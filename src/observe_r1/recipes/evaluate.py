"""Evaluation on held-out samples: greedy accuracy overall and per level / skill, format rate, lengths, and
optionally pass@k from k sampled responses. `observe-r1 eval --model DIR --data FILE` and the training
recipes' periodic validation both call `evaluate`."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from observe_r1.data.dataset import Sample
from observe_r1.models.inputs import ChatEncoder
from observe_r1.rewards import RewardBatch, Rewarder
from observe_r1.rollout.base import PromptBatch, RolloutBackend, SamplingParams


def evaluate(
    backend: RolloutBackend,
    encoder: ChatEncoder,
    samples: list[Sample],
    rewarder: Rewarder,
    system: str,
    max_new_tokens: int,
    batch_size: int = 32,
    pass_k: int = 0,
    seed: int = 0,
    on_batch=None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(metrics, per-sample records). Metrics: accuracy, format_rate, length_mean, length_correct_mean,
    accuracy/level_<L> and accuracy/skill_<S> when the samples carry those columns, and with `pass_k` > 1
    pass@k: the share of samples with at least one correct response among k sampled at temperature 1, and
    accuracy_sampled: the mean accuracy of those k responses."""
    from observe_r1.recipes.common import encode_prompts

    records: list[dict[str, Any]] = []
    greedy = SamplingParams(n=1, greedy=True, max_new_tokens=max_new_tokens)
    sampled = SamplingParams(n=pass_k, max_new_tokens=max_new_tokens)
    for start in range(0, len(samples), batch_size):
        chunk = list(samples[start : start + batch_size])
        prompts, images, _ = encode_prompts(chunk, encoder, system)
        batch = PromptBatch(prompts, list(range(start, start + len(chunk))), seed)
        rollout = backend.generate(batch, greedy)
        result = rewarder(reward_batch(rollout, chunk, images, system))
        fmt = next((n for n in result.terms if "format" in n), None)
        hits = None
        if pass_k > 1:
            many = backend.generate(batch, sampled)
            hits = (
                rewarder(reward_batch(many, chunk, images, system)).correct.view(len(chunk), pass_k).float()
            )
        for i, s in enumerate(chunk):
            records.append(
                {
                    "id": s.id,
                    "level": s.metadata.get("level"),
                    "skill": s.metadata.get("skill"),
                    "answer": s.answer,
                    "response": rollout.texts[i],
                    "correct": bool(result.correct[i]),
                    "format": None if fmt is None else bool(result.terms[fmt][i] == 1),
                    "length": int(rollout.lengths[i]),
                    **(
                        {}
                        if hits is None
                        else {f"pass@{pass_k}": bool(hits[i].any()), "sampled": float(hits[i].mean())}
                    ),
                }
            )
        if on_batch is not None:
            on_batch(len(chunk))
    return summarise(records), records


def summarise(records: list[dict[str, Any]]) -> dict[str, float]:
    if not records:
        return {}
    n = len(records)
    correct = [r for r in records if r["correct"]]
    metrics = {
        "accuracy": len(correct) / n,
        "length_mean": sum(r["length"] for r in records) / n,
        "length_correct_mean": sum(r["length"] for r in correct) / len(correct) if correct else float("nan"),
        "count": float(n),
    }
    if records[0]["format"] is not None:
        metrics["format_rate"] = sum(bool(r["format"]) for r in records) / n
    for key in [k for k in records[0] if k.startswith("pass@")]:
        metrics[key] = sum(r[key] for r in records) / n
        metrics["accuracy_sampled"] = sum(r["sampled"] for r in records) / n
    for key in ("level", "skill"):
        groups: dict[Any, list[bool]] = defaultdict(list)
        for r in records:
            if r[key] is not None:
                groups[r[key]].append(r["correct"])
        for value, hits in sorted(groups.items(), key=lambda kv: str(kv[0])):
            metrics[f"accuracy/{key}_{value}"] = sum(hits) / len(hits)
    return metrics


def reward_batch(rollout, samples: list[Sample], images: list[list], system: str) -> RewardBatch:
    """The RewardBatch of a rollout: per response, its prompt's sample fields and dataset columns."""
    from observe_r1.data.prompts import with_system_prompt

    idx = rollout.prompt_index
    columns = sorted({k for s in samples for k in s.metadata})
    return RewardBatch(
        completions=rollout.texts,
        completion_ids=[
            row[: int(n)].tolist() for row, n in zip(rollout.completion_ids, rollout.lengths, strict=True)
        ],
        completion_lengths=[int(n) for n in rollout.lengths],
        prompts=[with_system_prompt(samples[i].messages, system) for i in idx],
        images=[images[i] for i in idx],
        answers=[samples[i].answer for i in idx],
        group_ids=list(rollout.group_ids),
        columns={c: [samples[i].metadata.get(c) for i in idx] for c in columns},
    )


def markdown_table(metrics: dict[str, float], title: str = "Evaluation") -> str:
    """The metrics as a markdown table: overall first, then per level and per skill."""
    lines = [f"## {title}", "", "| metric | value |", "| --- | --- |"]
    for key, value in metrics.items():
        shown = (
            f"{value:.4f}" if isinstance(value, float) and value == value and key != "count" else f"{value:g}"
        )
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines) + "\n"


def write_report(
    out: Path, metrics: dict[str, float], records: list[dict[str, Any]], title: str = "Evaluation"
) -> None:
    """OUT/eval.json (metrics and every response) and OUT/eval.md (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({"metrics": metrics, "records": records}, indent=1))
    (out / "eval.md").write_text(markdown_table(metrics, title))


def evaluate_checkpoint(
    model_dir: str | Path,
    data: list[str],
    system: str | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    pass_k: int = 0,
    limit: int = 0,
    max_prompt_length: int = 9216,
    on_batch=None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Load a checkpoint and evaluate it on data files with the default rewards (accuracy + observe format).
    `system` None: the system prompt the checkpoint was trained with (its observe_r1.json), else "observe"."""
    import torch

    from observe_r1.data.dataset import load_samples
    from observe_r1.data.prompts import system_prompt
    from observe_r1.models.policy import load_model
    from observe_r1.rollout.hf import HFRollout

    encoder = ChatEncoder.from_pretrained(model_dir, max_prompt_length=max_prompt_length)
    text = system_prompt(system or encoder.system_prompt or "observe")
    samples = load_samples(data, encoder, text)[: limit or None]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(str(model_dir)).to(device).eval()
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with Rewarder([("accuracy", 1.0), ("observe_format", 0.5)]) as rewarder, amp:
        return evaluate(HFRollout(model, encoder), encoder, samples, rewarder, text, max_new_tokens, batch_size,
                        pass_k, on_batch=on_batch)  # fmt: skip
