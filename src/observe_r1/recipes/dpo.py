"""A preference cold start (Metis-SPECS): `observe-r1 dpo CONFIG`, or a `dpo` stage before GRPO.

1. The starting model answers every training prompt `rollout.n` times; for each prompt whose responses
   include a correct one with the right format (the first format term = 1), the shortest such response is
   the chosen one and the same response with its format corrupted (tags renamed or removed, a stable coin
   per prompt) is the rejected one: the pair differs in format only. Pairs are written to OUTPUT/pairs.jsonl
   (a resumed run reads them back instead of sampling again).
2. The policy is trained on the pairs with the DPO loss against the frozen starting model plus
   `sft.dpo_sft_weight` x the token-mean negative log-likelihood of the chosen responses (algos.dpo_loss;
   beta = `sft.dpo_beta`), `optim.mini_batch_size` pairs per optimiser step, micro-batches of
   `optim.micro_batch_size` pairs; checkpoints, resume and report as every recipe; the final model is
   exported to OUTPUT/model for the GRPO stage that follows.
Sampling runs on one process: run it without torchrun (the GRPO stage after it may use many).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import torch

from observe_r1.algos import aggregate, dpo_loss
from observe_r1.config import Config, ConfigError
from observe_r1.data.dataset import Sample
from observe_r1.data.prompts import system_prompt
from observe_r1.data.transforms import corrupt_format, stable_coin
from observe_r1.models.policy import completion_logprobs, frozen, load_model, reference_of
from observe_r1.recipes.sft import export_trained
from observe_r1.rewards import Rewarder
from observe_r1.rollout.batch import chunks, sequence_inputs
from observe_r1.training import loop, runtime, setup
from observe_r1.training.evaluation import evaluate_on_main
from observe_r1.training.parts import sample_responses, start_sampling, trainee
from observe_r1.training.report import SFT_PANELS, Panel
from observe_r1.training.scoring import ScoredRollout, reference_rollout

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.jsonl"
DPO_PANELS: tuple[Panel, ...] = (
    ("dpo/loss", "DPO loss", ()),
    ("dpo/reward_accuracy", "chosen preferred (share of pairs)", ()),
    ("sft/loss", "SFT loss on the chosen (per token)", ()),
    SFT_PANELS[1],
)


def preference_pairs(
    scored: list[ScoredRollout], format_term: str, seed: int
) -> list[tuple[Sample, str, str]]:
    """(sample, chosen, rejected) for each prompt with a correct, well-formatted response: the shortest such
    response, and the same with its format corrupted."""
    pairs = []
    for got in scored:
        n = len(got.rollout.texts) // len(got.samples)
        formatted = got.result.terms[format_term] >= 1
        for g, sample in enumerate(got.samples):
            rows = [i for i in range(g * n, (g + 1) * n) if got.result.correct[i] and formatted[i]]
            if rows:
                best = min(rows, key=lambda i: int(got.rollout.lengths[i]))
                text = got.rollout.texts[best]
                pairs.append((sample, text, corrupt_format(text, rename=stable_coin(seed, sample.id, 0.5))))
    return pairs


def collect_pairs(
    cfg: Config, samples: list[Sample], rewarder: Rewarder, out: Path
) -> list[tuple[Sample, str, str]]:
    """The pairs of OUTPUT/pairs.jsonl when a run resumes, else sampled now and written there (atomically)."""
    path = out / PAIRS_FILE
    by_id = {s.id: s for s in samples}
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [(by_id[r["id"]], r["chosen"], r["rejected"]) for r in rows if r["id"] in by_id]
    if rewarder.format_term is None:
        raise ConfigError(
            "dpo: the pairs differ in format, so reward.terms needs a format term (observe_format, ...)"
        )
    system = system_prompt(cfg.data.system_prompt)
    pairs = preference_pairs(sample_responses(cfg, cfg.model.path, samples, rewarder, cfg.rollout.n, system),
                             rewarder.format_term, cfg.seed)  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"id": s.id, "chosen": c, "rejected": r}) + "\n" for s, c, r in pairs))
    os.replace(tmp, path)
    log.info("dpo: %d pairs from %d prompts x %d responses", len(pairs), len(samples), cfg.rollout.n)
    return pairs


def dpo(cfg: Config, given: setup.Inputs | None = None) -> Path:
    """Run the preference cold start; returns the folder of the exported model (OUTPUT/model)."""
    given = given or setup.Inputs()
    cfg, acc, encoder, samples, test, rewarder = start_sampling(cfg, given, "dpo")
    out = Path(cfg.logging.output_dir)
    pairs = collect_pairs(cfg, samples, rewarder, out)
    if not pairs:
        raise ValueError("dpo: no prompt had a correct, well-formatted response to build a pair from; the starting "
                         "model must already answer some (a cold start), or raise rollout.n")  # fmt: skip
    data = [dataclasses.replace(s, metadata={**s.metadata, "chosen": c, "rejected": r}) for s, c, r in pairs]
    o = cfg.optim
    steps = o.max_steps or max(1, o.epochs * len(data) // o.mini_batch_size)

    policy, optimizer, scheduler, sampler, checkpointer, run, tracker, params = trainee(
        cfg, acc, encoder, data, steps
    )
    trust = cfg.model.trust_remote_code
    reference = (
        None
        if cfg.model.lora_rank
        else frozen(load_model(cfg.model.path, trust_remote_code=trust)).to(acc.device)
    )
    system = system_prompt(cfg.data.system_prompt)
    amp = runtime.autocast(acc.device, cfg.model.dtype)

    def evaluate() -> dict[str, float]:
        return evaluate_on_main(cfg, acc, policy, encoder, test, system, given.rewards)

    def sequence_logp(model: torch.nn.Module, rollout, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        logp, _ = completion_logprobs(model, sequence_inputs(rollout, idx, encoder), packed=cfg.model.packing)
        mask = rollout.completion_mask[idx, : logp.shape[1]].to(logp.device, torch.float32)
        return (logp * mask).sum(1), logp

    log.info("DPO: %d optimiser steps x %d pairs (beta %g, SFT weight %g)", steps, o.mini_batch_size,
             cfg.sft.dpo_beta, cfg.sft.dpo_sft_weight)  # fmt: skip
    with runtime.progress(acc, steps, run.step, "DPO") as bar, loop.interruptible():
        while run.step < steps:
            started, step = time.perf_counter(), run.step
            batch = [data[i] for i in sampler.next(o.mini_batch_size)]
            good = reference_rollout(batch, encoder, system, "chosen")
            bad = reference_rollout(batch, encoder, system, "rejected")
            micros = chunks(range(len(batch)), o.micro_batch_size)
            mask = good.completion_mask.to(acc.device, torch.float32)
            denominator = runtime.global_denominator(acc, [mask[m] for m in micros], "token_mean", 0)
            stats: dict[str, float] = {
                "dpo/loss": 0.0,
                "sft/loss": 0.0,
                "dpo/reward_accuracy": 0.0,
                "dpo/margin": 0.0,
            }
            for k, idx in enumerate(micros):
                with acc.no_sync(policy) if k < len(micros) - 1 else contextlib.nullcontext(), amp:
                    with torch.no_grad(), reference_of(acc.unwrap_model(policy), reference) as ref:
                        ref_good, _ = sequence_logp(ref, good, idx)
                        ref_bad, _ = sequence_logp(ref, bad, idx)
                    pol_good, token_logp = sequence_logp(policy, good, idx)
                    pol_bad, _ = sequence_logp(policy, bad, idx)
                    pair_loss, margin = dpo_loss(pol_good, pol_bad, ref_good, ref_bad, cfg.sft.dpo_beta)
                    nll = aggregate(-token_logp, mask[idx, : token_logp.shape[1]], "token_mean", denominator)
                    loss = pair_loss.sum() / len(batch) + cfg.sft.dpo_sft_weight * nll
                    acc.backward(loss)
                stats["dpo/loss"] += float(pair_loss.detach().sum()) / len(batch)
                stats["sft/loss"] += float(nll.detach())
                stats["dpo/reward_accuracy"] += float((margin > 0).float().sum()) / len(batch)
                stats["dpo/margin"] += float(margin.sum()) / len(batch)
            stats["actor/grad_norm"] = runtime.optimizer_step(acc, params, optimizer, scheduler, cfg, run)
            stats |= {"optim/lr": scheduler.get_last_lr()[0], "perf/step_s": time.perf_counter() - started}
            metrics = loop.end_of_step(
                cfg, run, stats, tracker, checkpointer, evaluate if test else None, steps
            )
            bar(step, metrics)
            if loop.stop_requested(acc, given, step, metrics, run, checkpointer):
                break
    loop.finish(cfg, acc, run, tracker, checkpointer, evaluate if test else None, "DPO run", DPO_PANELS)
    rewarder.close()
    return export_trained(acc, policy, encoder, out / "model")
