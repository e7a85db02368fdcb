"""GRPO with the Observe-R1 recipe: `observe-r1 train CONFIG`.

One rollout step, top to bottom (each stage is one timed call):
  sample prompts + rollout (n responses each) + rewards -> bonus, advantages x f(d)
  -> old log-probs (only when the update is off-policy or the KL sits in the reward) -> reference log-probs
  -> per PPO epoch and mini-batch: gradient accumulation over micro-batches, one optimiser step
  -> log -> evaluate / checkpoint when due.

Processes: the step's prompts are drawn identically on every process and shared out so that each
process's k-th mini-batch is its part of the k-th global one (`process_share`); a group never straddles
processes; rewards and advantages are per group, hence local; the loss is
normalised by mini-batch totals summed over processes and DDP averages gradients, so N processes compute
the update of 1. Sequences are not shuffled between mini-batches (docs/grpo.md says why).

Left out on purpose: value models (GRPO needs none), reward models (rewards are verifiable here), vLLM
(cannot be installed here; `RolloutBackend` is where it would plug in).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from observe_r1.algos import (
    aggregate,
    apply_length_bonus,
    difficulty_weights,
    group_advantages,
    kl_divergence,
    kl_reward_advantages,
    policy_loss,
    zero_variance_groups,
)
from observe_r1.config import Config
from observe_r1.data.dataset import Sample
from observe_r1.data.prompts import system_prompt
from observe_r1.data.sampler import OnlineSampler, PromptSampler, make_sampler
from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import completion_logprobs, frozen, load_model, reference_of, sequence_inputs
from observe_r1.recipes import common
from observe_r1.recipes.evaluate import reward_batch
from observe_r1.recipes.tracking import StageTimer
from observe_r1.rewards import Rewarder, RewardResult
from observe_r1.rewards.compose import merge_results
from observe_r1.rollout.base import PromptBatch, Rollout, SamplingParams, select_groups
from observe_r1.rollout.hf import HFRollout

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """Batch sizes per process and step counts, derived once from the config and the number of processes."""

    world: int
    prompts: int  # prompts per rollout step, this process
    responses: int  # responses per rollout step, this process
    mini: int  # responses per optimiser step, this process
    micro: int
    steps: int  # rollout steps in the run
    updates_per_step: int  # optimiser steps per rollout step
    positions: list[int]  # this process's prompts: positions in the step's prompts (see `process_share`)

    @classmethod
    def make(cls, cfg: Config, world: int, dataset_size: int, rank: int = 0) -> Plan:
        r, o = cfg.rollout, cfg.optim
        for name, total in (
            ("rollout.prompts_per_step", r.prompts_per_step),
            ("optim.mini_batch_size", o.mini_batch_size),
        ):
            if total % world:
                raise ValueError(f"{name}={total} must be divisible by the number of processes ({world})")
        prompts, mini = r.prompts_per_step // world, o.mini_batch_size // world
        if mini % o.micro_batch_size:
            raise ValueError(
                f"optim.mini_batch_size / processes ({mini}) must be a multiple of optim.micro_batch_size"
            )
        steps = o.max_steps or max(1, o.epochs * dataset_size // r.prompts_per_step)
        per_mini = o.mini_batch_size // r.n if o.mini_batch_size % (r.n * world) == 0 else r.prompts_per_step
        if world > 1 and per_mini == r.prompts_per_step and o.mini_batch_size < r.prompts_per_step * r.n:
            log.warning("optim.mini_batch_size=%d is not a multiple of rollout.n x processes (%d): each "
                        "optimiser step sees other sequences than with 1 process", o.mini_batch_size, r.n * world)  # fmt: skip
        return cls(world, prompts, prompts * r.n, mini, o.micro_batch_size, steps, prompts * r.n // mini * o.ppo_epochs,
                   process_share(r.prompts_per_step, per_mini, world, rank))  # fmt: skip


@dataclass
class StepBatch:
    """This process's groups of one rollout step: their samples, images, responses and rewards."""

    samples: list[Sample]  # one per group
    indices: list[int]  # each group's position in the dataset
    images: list[list]  # one list of PIL images per group
    rollout: Rollout
    result: RewardResult
    tries: int = 1
    bad_prompts: int = 0


@dataclass
class Scored:
    rewards: torch.Tensor  # [groups, n] the terms' weighted sum
    shaped: torch.Tensor  # [groups, n] after the bonus
    correct: torch.Tensor  # [groups, n] bool
    weights: torch.Tensor  # [groups] f(d); ones when dynamic weighting is off
    advantages: torch.Tensor  # [B] sequence advantages


@dataclass
class Engine:
    """What the stages need, built once."""

    cfg: Config
    plan: Plan
    acc: Any
    samples: list[Sample]
    sampler: PromptSampler | OnlineSampler
    encoder: ChatEncoder
    system: str
    backend: HFRollout
    rewarder: Rewarder
    sampling: SamplingParams
    timer: StageTimer


def train(cfg: Config) -> Path:
    """Run GRPO as configured; returns the output directory."""
    acc = common.make_accelerator()
    cfg = common.prepare_inputs(cfg, acc)
    common.seed_everything(cfg.seed)
    encoder = common.load_encoder(cfg)
    samples, test = common.load_data(cfg, encoder)
    plan = Plan.make(cfg, acc.num_processes, len(samples), acc.process_index)

    policy = common.build_policy(cfg)
    kl_on = cfg.algorithm.kl_mode != "off"
    reference = (
        frozen(load_model(cfg.model.path, dtype=common.reference_dtype(cfg, acc.device))).to(acc.device)
        if kl_on and not cfg.model.lora_rank
        else None
    )
    optimizer, scheduler = common.build_optimizer(cfg, policy, plan.steps * plan.updates_per_step)
    policy, optimizer = common.prepare_model(acc, policy, optimizer, samples)
    sampler = make_sampler(cfg.data.sampler, len(samples), cfg.seed, ladder_prior(samples), cfg.data.online_new_share,
                           cfg.data.online_ema)  # fmt: skip
    checkpointer = common.Checkpointer(cfg, acc, policy, optimizer, scheduler, sampler, encoder)
    run = checkpointer.resume()
    tracker = common.make_tracker(cfg, run, acc)
    r = cfg.rollout
    e = Engine(
        cfg, plan, acc, samples, sampler, encoder, system_prompt(cfg.data.system_prompt),
        HFRollout(acc.unwrap_model(policy), encoder), Rewarder.from_config(cfg.reward),
        SamplingParams(r.n, r.temperature, r.top_p, r.top_k, r.max_new_tokens, chunk_size=r.chunk_size),
        StageTimer(),
    )  # fmt: skip
    amp = common.autocast(acc.device, cfg.model.dtype)
    timer = e.timer
    log.info("GRPO: %d steps x %d prompts x %d responses, %d optimiser step(s) per step, %d process(es)",
             plan.steps, r.prompts_per_step, r.n, plan.updates_per_step, plan.world)  # fmt: skip

    with common.progress(acc, plan.steps, run.step, "GRPO") as bar:
        while run.step < plan.steps:
            step, started = run.step, time.perf_counter()
            with amp:
                batch = rollout_and_reward(e, step)  # timed inside: time/rollout and time/reward
            with timer("advantage"):
                scored = score(cfg, batch)
            with timer("old_logprob"), amp:
                need_old = plan.updates_per_step > 1  # on-policy, the update's own forward pass gives them
                old_logp = all_logprobs(e, acc.unwrap_model(policy), batch.rollout) if need_old else None
            with timer("ref"), amp:
                ref_logp = None
                if kl_on:
                    with reference_of(acc.unwrap_model(policy), reference) as ref:
                        ref_logp = all_logprobs(e, ref, batch.rollout)
            with timer("update"), amp:
                token_adv, mask, kl_stats = token_advantages(
                    cfg, batch.rollout, scored, old_logp, ref_logp, acc.device
                )
                stats = update(e, policy, optimizer, scheduler, batch.rollout, token_adv, mask, old_logp, ref_logp,
                               run, scored.advantages.to(acc.device))  # fmt: skip
            stats |= kl_stats
            metrics = step_metrics(cfg, batch, scored, stats, timer.pop(), time.perf_counter() - started)
            metrics["optim/lr"] = scheduler.get_last_lr()[0]
            metrics["advantage/zero_weight_streak"] = watch_zero_weights(e, run, scored)
            metrics = common.mean_across_processes(metrics, acc)
            run.step += 1
            evaluation = None  # on the main process only; the others get {}
            if cfg.logging.eval_every and run.step % cfg.logging.eval_every == 0 and test:
                evaluation = run_eval(e, policy, test)
                metrics.update(evaluation)
            if tracker is not None:
                tracker.log(step, metrics)
                run.history = tracker.history
                if cfg.logging.dump_rollouts_every and step % cfg.logging.dump_rollouts_every == 0:
                    dump_rollouts(cfg, step, batch, scored)
            if evaluation is not None:  # after the log, so the best checkpoint's history has this step
                checkpointer.keep_best(run, evaluation)
            if run.step % cfg.checkpoint.every == 0 or run.step == plan.steps:
                checkpointer.save(run)
            bar(step, metrics)
    if test and (not cfg.logging.eval_every or run.step % cfg.logging.eval_every):
        final = run_eval(e, policy, test)
        if tracker is not None:
            tracker.log(run.step, final)
        checkpointer.keep_best(run, final)
    checkpointer.export_merged()
    e.rewarder.close()
    if tracker is not None:
        tracker.close()
    acc.wait_for_everyone()
    return Path(cfg.logging.output_dir)


def process_share(prompts: int, per_mini: int, world: int, rank: int) -> list[int]:
    """The positions, among a step's `prompts`, of the prompts process `rank` rolls out. Each global
    mini-batch (`per_mini` consecutive prompts) is split into `world` contiguous parts and this process takes
    part `rank` of each, so its k-th local mini-batch is its part of the k-th global one: N processes then
    take the same optimiser steps as 1, whatever the number of mini-batches and PPO epochs. A group (one
    prompt's n responses) never straddles processes."""
    share = per_mini // world
    return [j * per_mini + rank * share + i for j in range(prompts // per_mini) for i in range(share)]


# ------------------------------------------------------------------ rollout + rewards


def rollout_and_reward(e: Engine, step: int) -> StepBatch:
    """Generate and score this process's prompts. With DAPO dynamic sampling, groups whose rewards all
    agree are replaced by groups of fresh prompts (all processes draw together, at most
    `dynamic_sampling_max_tries` draws); slots still empty after the last draw keep zero-variance groups,
    which carry no advantage, so batch shapes stay fixed on every process."""
    a, n, need = e.cfg.algorithm, e.cfg.rollout.n, e.plan.prompts
    tries = a.dynamic_sampling_max_tries if a.dynamic_sampling else 1
    kept: list[tuple[StepBatch, list[int]]] = []
    draws: list[StepBatch] = []
    for attempt in range(tries):
        draw = draw_once(e, step, attempt)
        update_sampler(e, draw)
        draws.append(draw)
        varied = ~zero_variance_groups(draw.result.total.view(-1, n))
        have = sum(len(g) for _, g in kept)
        kept.append((draw, [g for g in range(need) if varied[g]][: need - have]))
        have = sum(len(g) for _, g in kept)
        if not a.dynamic_sampling or _all_processes(e.acc, have >= need):
            break
    if not a.dynamic_sampling:
        return draws[0]
    for draw in draws:  # top up with zero-variance groups, first draw first
        have = sum(len(g) for _, g in kept)
        taken = {g for d, gs in kept if d is draw for g in gs}
        kept.append((draw, [g for g in range(need) if g not in taken][: need - have]))
    kept = [(d, g) for d, g in kept if g]
    rows = [(d, [g * n + j for g in gs for j in range(n)]) for d, gs in kept]
    return StepBatch(
        samples=[d.samples[g] for d, gs in kept for g in gs],
        indices=[d.indices[g] for d, gs in kept for g in gs],
        images=[d.images[g] for d, gs in kept for g in gs],
        rollout=select_groups([(d.rollout, gs) for d, gs in kept], n, e.encoder.pad_token_id),
        result=merge_results([(d.result, rs) for d, rs in rows]),
        tries=len(draws),
        bad_prompts=sum(d.bad_prompts for d in draws),
    )


def draw_once(e: Engine, step: int, attempt: int) -> StepBatch:
    """Take the next prompts (this process's contiguous share), generate n responses each, score them."""
    total = e.cfg.rollout.prompts_per_step
    drawn = e.sampler.next(total)
    indices = [drawn[p] for p in e.plan.positions]
    samples = [e.samples[i] for i in indices]
    prompts, images, bad = common.encode_prompts(samples, e.encoder, e.system)
    # globally unique, layout-independent group ids: they also seed the sampling of each response
    tries = e.cfg.algorithm.dynamic_sampling_max_tries
    group_ids = [(step * tries + attempt) * total + p for p in e.plan.positions]
    with e.timer("rollout"):
        rollout = e.backend.generate(PromptBatch(prompts, group_ids, e.cfg.seed), e.sampling)
    with e.timer("reward"):
        result = e.rewarder(reward_batch(rollout, samples, images, e.system))
    return StepBatch(samples, indices, images, rollout, result, bad_prompts=bad)


def update_sampler(e: Engine, draw: StepBatch) -> None:
    """Tell the sampler each group's accuracy (all processes' groups, so every copy of it stays the same)."""
    accuracy = draw.result.correct.view(len(draw.indices), -1).float().mean(1)
    indices = torch.tensor(draw.indices, dtype=torch.float64)
    if e.acc.num_processes > 1:
        accuracy = e.acc.gather(accuracy.to(e.acc.device)).cpu()
        indices = e.acc.gather(indices.to(e.acc.device)).cpu()
    e.sampler.update([int(i) for i in indices.tolist()], accuracy.tolist())


def ladder_prior(samples: list[Sample]) -> list[float] | None:
    """Starting pass rates for the online sampler: 1 - difficulty, when every row has a ladder difficulty."""
    if samples and all(isinstance(s.metadata.get("difficulty"), int | float) for s in samples):
        return [1.0 - float(s.metadata["difficulty"]) for s in samples]
    return None


def _all_processes(acc: Any, flag: bool) -> bool:
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([float(flag)], device=acc.device)
    return bool(acc.reduce(t, reduction="sum").item() == acc.num_processes)


# ------------------------------------------------------------------ advantages


def score(cfg: Config, batch: StepBatch) -> Scored:
    """Observe-R1: bonus for the shortest correct response (spec 4), group-normalised advantages on the
    rewards after the bonus, scaled by f(d) = 4 sigma d (1 - d) of the group's accuracy d (spec 5)."""
    n, rc, a = cfg.rollout.n, cfg.reward, cfg.algorithm
    rewards = batch.result.total.view(-1, n)
    correct = batch.result.correct.view(-1, n)
    lengths = batch.rollout.lengths.view(-1, n)
    shaped = (
        apply_length_bonus(rewards, correct, lengths, rc.bonus_coef, rc.bonus_min_length)
        if rc.bonus_coef
        else rewards
    )
    weights = difficulty_weights(correct, a.sigma) if a.difficulty_weighting else torch.ones(len(rewards))
    advantages = weights[:, None] * group_advantages(shaped, a.estimator)
    return Scored(rewards, shaped, correct, weights, advantages.flatten())


ZERO_WEIGHT_STEPS = 3  # rollout steps in a row with f(d) = 0 for every group before the run warns


def watch_zero_weights(e: Engine, run: common.RunState, scored: Scored) -> float:
    """Count the rollout steps in a row where f(d) was 0 for every group on every process (no gradient at
    all) and warn loudly from the third: a dense or partial-credit reward never makes a response "correct"
    at the default threshold, so every group looks all-wrong. Returns the streak, logged as a metric."""
    cfg = e.cfg
    if not cfg.algorithm.difficulty_weighting:
        return 0.0
    run.zero_weight_streak = (
        run.zero_weight_streak + 1 if _all_processes(e.acc, bool((scored.weights == 0).all())) else 0
    )
    if (
        run.zero_weight_streak >= ZERO_WEIGHT_STEPS
        and run.zero_weight_streak % (ZERO_WEIGHT_STEPS * 10) == ZERO_WEIGHT_STEPS
    ):
        log.warning(
            "no gradient for %d steps in a row: f(d) = 0 for every group, because no group had both correct and "
            "wrong responses (correct: reward term %r >= reward.correct_threshold=%g). With a dense or "
            "partial-credit reward set reward.correct_threshold (e.g. 0.5) or algorithm.difficulty_weighting=false; "
            "otherwise the data is too hard or too easy for this model.",
            run.zero_weight_streak, cfg.reward.correct_term, cfg.reward.correct_threshold,
        )  # fmt: skip
    return float(run.zero_weight_streak)


def token_advantages(cfg: Config, rollout: Rollout, scored: Scored, old_logp, ref_logp, device) -> tuple:
    """([B, T] token advantages, [B, T] loss mask, metrics). With `kl_mode: reward`, the k-estimate of
    KL(rollout policy || reference) is a per-token penalty inside the return (the original's OpenRLHF way);
    when the update is on-policy (no `old_logp`), `update` adds that penalty from its own forward pass."""
    a = cfg.algorithm
    mask = rollout.completion_mask.to(device, torch.float32)
    if a.mask_truncated:
        mask = mask * (~rollout.truncated).to(device, torch.float32)[:, None]
    advantages = scored.advantages.to(device)
    if a.kl_mode == "reward" and old_logp is not None:
        kl = kl_divergence(old_logp, ref_logp, a.kl_estimator)
        kl_mean = float((kl * mask).sum() / mask.sum().clamp(min=1))
        return kl_reward_advantages(advantages, kl, mask, a.kl_coef), mask, {"actor/kl_ref": kl_mean}
    return advantages[:, None] * mask, mask, {}


# ------------------------------------------------------------------ log-probs and the update


def micro_batches(rollout: Rollout, plan: Plan) -> list[list[list[int]]]:
    """Each mini-batch's micro-batches. Inside a mini-batch the sequences go longest first, so each
    micro-batch, trimmed to its longest completion, carries little padding; the optimiser step still sums
    over the same sequences."""
    minis = common.chunks(range(len(rollout)), plan.mini)
    by_length = [sorted(mini, key=lambda i: -int(rollout.lengths[i])) for mini in minis]
    return [common.chunks(mini, plan.micro) for mini in by_length]


@torch.no_grad()
def all_logprobs(e: Engine, model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
    """[B, T] completion log-probs, in the same micro-batches as the update (so they match it exactly)."""
    out = torch.zeros(rollout.completion_ids.shape, device=e.acc.device)
    for idx in [idx for micros in micro_batches(rollout, e.plan) for idx in micros]:
        logp, _ = completion_logprobs(model, sequence_inputs(rollout, idx, e.encoder), e.sampling.temperature)
        out[idx, : logp.shape[1]] = logp
    return out


def update(
    e: Engine, policy, optimizer, scheduler, rollout, token_adv, mask, old_logp, ref_logp, run, seq_adv
) -> dict:
    """PPO epochs x mini-batches; each mini-batch is one optimiser step, accumulated over micro-batches.
    On-policy (`old_logp` None) the rollout policy's log-probs are this pass's, detached: no separate pass."""
    cfg, plan, acc, a = e.cfg, e.plan, e.acc, e.cfg.algorithm
    params = [p for p in policy.parameters() if p.requires_grad]
    stats: dict[str, list[float]] = defaultdict(list)
    for _ in range(cfg.optim.ppo_epochs):
        for micros in micro_batches(rollout, plan):
            denominator = common.global_denominator(
                acc, [mask[i] for i in micros], a.loss_agg, cfg.rollout.max_new_tokens
            )
            for k, idx in enumerate(micros):
                sync = contextlib.nullcontext() if k == len(micros) - 1 else acc.no_sync(policy)
                with sync:
                    inputs = sequence_inputs(rollout, idx, e.encoder)
                    logp, entropy = completion_logprobs(policy, inputs, e.sampling.temperature, entropy=True,
                                                        entropy_grad=a.entropy_coef > 0)  # fmt: skip
                    width = logp.shape[1]
                    m, adv = mask[idx, :width], token_adv[idx, :width]
                    old = old_logp[idx, :width] if old_logp is not None else logp.detach()
                    if a.kl_mode == "reward" and old_logp is None:
                        kl = kl_divergence(old, ref_logp[idx, :width], a.kl_estimator)
                        adv = kl_reward_advantages(seq_adv[idx], kl, m, a.kl_coef)
                        stats["actor/kl_ref"].append(float((kl * m).sum() / m.sum().clamp(min=1)))
                    loss, s = policy_loss(
                        logp, old, adv, m, a.clip_low, a.clip_high, a.dual_clip, a.loss_agg, denominator
                    )
                    if a.kl_mode == "loss":
                        kl = kl_divergence(logp, ref_logp[idx, :width], a.kl_estimator)
                        loss = loss + a.kl_coef * aggregate(kl, m, a.loss_agg, denominator)
                        stats["actor/kl_ref"].append(float((kl.detach() * m).sum() / m.sum().clamp(min=1)))
                    assert entropy is not None
                    if a.entropy_coef:
                        loss = loss - a.entropy_coef * aggregate(entropy, m, a.loss_agg, denominator)
                    acc.backward(
                        loss * plan.world
                    )  # DDP averages; the denominator already covers all processes
                stats["actor/loss"].append(float(loss.detach()))
                stats["actor/entropy"].append(float((entropy.detach() * m).sum() / m.sum().clamp(min=1)))
                for key, value in vars(s).items():
                    stats[f"actor/{key}"].append(value)
            grad_norm = common.optimizer_step(acc, params, optimizer, scheduler, cfg, run)
            stats["actor/grad_norm"].append(grad_norm)
            if not math.isfinite(grad_norm):
                stats["optim/skipped_steps"].append(1.0)
    out = {k: sum(v) / len(v) for k, v in stats.items() if k != "optim/skipped_steps"}
    out["optim/skipped_steps"] = float(len(stats.get("optim/skipped_steps", [])))
    return out


# ------------------------------------------------------------------ logging, evaluation


def step_metrics(
    cfg: Config, batch: StepBatch, scored: Scored, stats: dict, times: dict, seconds: float
) -> dict:
    n = cfg.rollout.n
    lengths = batch.rollout.lengths.float()
    correct = scored.correct.flatten()
    m: dict[str, float] = dict(batch.result.metrics)
    fmt = next((t for t in batch.result.terms if "format" in t), None)
    if fmt is not None:
        m["format_rate"] = float((batch.result.terms[fmt] == 1).float().mean())
    hits = scored.correct.sum(1)
    m |= {
        "accuracy": float(correct.float().mean()),
        "reward/shaped/mean": float(scored.shaped.mean()),
        "bonus/group_rate": float((scored.shaped != scored.rewards).any(1).float().mean()),
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max()),
        "response/length_correct_mean": float(lengths[correct].mean()) if correct.any() else math.nan,
        "response/truncated_rate": float(batch.rollout.truncated.float().mean()),
        "advantage/weight_mean": float(scored.weights.mean()),
        "advantage/zero_weight_groups": float((scored.weights == 0).float().mean()),
        "advantage/zero_variance_groups": float(zero_variance_groups(scored.shaped).float().mean()),
        "data/bad_prompts": float(batch.bad_prompts),
        "dynamic_sampling/tries": float(batch.tries),
        "perf/generated_tokens": float(lengths.sum()),
        "perf/tokens_per_s": float(lengths.sum()) / max(times.get("time/rollout", 0.0), 1e-9),
        "perf/step_s": seconds,
    }
    m |= {f"difficulty/correct_{k}": float((hits == k).float().mean()) for k in range(n + 1)}
    return m | stats | times


def run_eval(e: Engine, policy, test: list[Sample]) -> dict[str, float]:
    batch = e.cfg.rollout.prompts_per_step * e.cfg.rollout.n
    return common.evaluate_on_main(e.cfg, e.acc, policy, e.encoder, test, e.system, batch)


def dump_rollouts(cfg: Config, step: int, batch: StepBatch, scored: Scored) -> None:
    """Every `logging.dump_rollouts_every` steps: OUTPUT/rollouts/step-N.jsonl, one response per line."""
    out = Path(cfg.logging.output_dir) / "rollouts"
    out.mkdir(exist_ok=True)
    r = batch.rollout
    with (out / f"step-{step:06d}.jsonl").open("w") as f:
        for i, text in enumerate(r.texts):
            s = batch.samples[r.prompt_index[i]]
            row = {
                "step": step,
                "group_id": r.group_ids[i],
                "id": s.id,
                "question": s.question,
                "images": [im if isinstance(im, str) else "<bytes>" for im in s.images],
                "answer": s.answer,
                "response": text,
                "length": int(r.lengths[i]),
                "truncated": bool(r.truncated[i]),
                "reward": float(scored.shaped.flatten()[i]),
                "terms": {k: float(v[i]) for k, v in batch.result.terms.items()},
                "correct": bool(scored.correct.flatten()[i]),
                "advantage": float(scored.advantages[i]),
            }
            f.write(json.dumps(row) + "\n")
