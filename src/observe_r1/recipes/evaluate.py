"""Greedy evaluation on held-out samples: accuracy overall and per level / skill, format rate, lengths."""

from __future__ import annotations

from collections import defaultdict
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
    format_term: str | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(metrics, per-sample records). Metrics: accuracy, format_rate, length_mean, length_correct_mean,
    and accuracy/level_<L>, accuracy/skill_<S> when the samples carry those columns."""
    from observe_r1.recipes.common import encode_prompts

    records: list[dict[str, Any]] = []
    sampling = SamplingParams(n=1, greedy=True, max_new_tokens=max_new_tokens)
    for start in range(0, len(samples), batch_size):
        chunk = list(samples[start : start + batch_size])
        prompts, images, _ = encode_prompts(chunk, encoder, system)
        rollout = backend.generate(PromptBatch(prompts, list(range(start, start + len(chunk)))), sampling)
        result = rewarder(reward_batch(rollout, chunk, images, system))
        fmt = format_term or next((n for n in result.terms if "format" in n), None)
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
                }
            )
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
