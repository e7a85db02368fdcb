"""Evaluation on held-out samples: greedy accuracy overall and per level / skill, format rate, lengths, and
optionally pass@k from k sampled responses. The training recipes' periodic validation and `observe-r1 eval`
both call `evaluate`. Imports data, models, rewards, rollout and training.scoring / runtime."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from accelerate import Accelerator

from observe_r1.config import Config
from observe_r1.data.dataset import Sample
from observe_r1.models.attention import visual_attention
from observe_r1.models.inputs import ChatEncoder
from observe_r1.rewards import Rewarder, grade
from observe_r1.rollout.base import Rollout, RolloutBackend, SamplingParams
from observe_r1.rollout.batch import chunks, sequence_inputs
from observe_r1.rollout.hf import HFRollout
from observe_r1.rollout.multiturn import with_tools
from observe_r1.training import sharding
from observe_r1.training.runtime import autocast
from observe_r1.training.scoring import generate_and_score


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
    lenient: bool = False,
    vas: int = 0,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(metrics, per-sample records). Metrics: accuracy, format_rate, length_mean, length_correct_mean,
    accuracy/level_<L> and accuracy/skill_<S> when the samples carry those columns, and with `pass_k` > 1
    pass@k: the share of samples with at least one correct response among k sampled at temperature 1, and
    accuracy_sampled: the mean accuracy of those k responses. With `lenient`, also accuracy_lenient: graded
    without the <answer> tags where a response has none (its one final answer, `extract_answer`'s fallback),
    so that a gain can be told apart from format learning. With `vas` > 0, also the Visual Attention Score of
    the greedy responses to the first `vas` samples (`models.attention`): vision/attention_score and
    vision/attention_score/layer_<l>."""
    records: list[dict[str, Any]] = []
    probe = VisualAttention(backend, encoder) if vas else None
    greedy = SamplingParams(n=1, greedy=True, max_new_tokens=max_new_tokens)
    sampled = SamplingParams(n=pass_k, max_new_tokens=max_new_tokens)
    fmt = rewarder.format_term
    for start in range(0, len(samples), batch_size):
        chunk = list(samples[start : start + batch_size])
        ids = list(range(start, start + len(chunk)))
        got = generate_and_score(backend, encoder, rewarder, chunk, ids, greedy, system, seed)
        if probe is not None and start < vas:
            probe.add(got.rollout, list(range(min(len(chunk), vas - start))))
        hits = None
        if pass_k > 1:
            many = generate_and_score(backend, encoder, rewarder, chunk, ids, sampled, system, seed)
            hits = many.result.correct.view(len(chunk), pass_k).float()
        for i, s in enumerate(got.samples):
            records.append(
                {
                    "id": s.id,
                    "level": s.metadata.get("level"),
                    "skill": s.metadata.get("skill"),
                    "answer": s.answer,
                    "response": got.rollout.texts[i],
                    "correct": bool(got.result.correct[i]),
                    "format": None if fmt is None else bool(got.result.terms[fmt][i] == 1),
                    **(
                        {"lenient": grade(got.rollout.model_texts[i], s.answer, fallback=True).score > 0}
                        if lenient
                        else {}
                    ),
                    "length": int(got.rollout.model_lengths[i]),  # multi-turn: the model's own tokens
                    **(
                        {}
                        if hits is None
                        else {f"pass@{pass_k}": bool(hits[i].any()), "sampled": float(hits[i].mean())}
                    ),
                }
            )
        if on_batch is not None:
            on_batch(len(chunk))
    return summarise(records) | (probe.metrics() if probe is not None else {}), records


class VisualAttention:
    """The Visual Attention Score over some greedy responses, accumulated batch by batch."""

    def __init__(self, backend: RolloutBackend, encoder: ChatEncoder, micro: int = 4):
        self.model = getattr(backend, "model", None)
        if self.model is None:
            raise ValueError(
                "the Visual Attention Score reads the policy's attention: it needs the HF backend"
            )
        self.encoder, self.micro = encoder, micro
        self.mass: torch.Tensor | None = None
        self.tokens = 0

    def add(self, rollout: Rollout, rows: list[int]) -> None:
        ids = [self.encoder.image_token_id, self.encoder.video_token_id]
        for idx in chunks(rows, self.micro):
            mass, tokens = visual_attention(self.model, sequence_inputs(rollout, idx, self.encoder), ids)
            self.mass = mass if self.mass is None else self.mass + mass
            self.tokens += tokens

    def metrics(self) -> dict[str, float]:
        if self.mass is None or not self.tokens:
            return {"vision/attention_score": float("nan")}  # no probed prompt had an image
        per_layer = (self.mass / self.tokens).tolist()
        out = {f"vision/attention_score/layer_{i}": v for i, v in enumerate(per_layer)}
        return {"vision/attention_score": sum(per_layer) / len(per_layer)} | out


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
    if "lenient" in records[0]:
        metrics["accuracy_lenient"] = sum(r["lenient"] for r in records) / n
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


def eval_batch_size(cfg: Config) -> int:
    """Prompts per evaluation batch: one rollout step's worth of sequences."""
    return cfg.rollout.prompts_per_step * cfg.rollout.n


def evaluate_on_main(cfg: Config, acc: Accelerator, model, encoder: ChatEncoder, test: list[Sample],
                     system: str, rewards: dict | None = None) -> dict[str, float]:  # fmt: skip
    """Greedy evaluation on the test split on the main process (the others wait), as `eval/*` metrics, with the
    configured reward terms (`rewards`: callables given from Python), and the Visual Attention Score on the first
    `logging.vas_probe` samples. A sharded model is gathered on every process first, so the main process runs
    it alone."""
    metrics: dict[str, float] = {}
    with sharding.gathered(acc.unwrap_model(model)) as full:
        if acc.is_main_process:
            backend = with_tools(cfg, HFRollout(full, encoder), encoder)
            with (
                autocast(acc.device, cfg.model.dtype, generation=True),
                Rewarder.from_config(cfg.reward, rewards) as rewarder,
            ):
                tokens, size, probe = cfg.rollout.max_new_tokens, eval_batch_size(cfg), cfg.logging.vas_probe
                result, _ = evaluate(backend, encoder, test, rewarder, system, tokens, size, vas=probe)
            metrics = {f"eval/{k}": v for k, v in result.items()}
        acc.wait_for_everyone()
    return metrics
