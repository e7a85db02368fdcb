"""GRPO with the Observe-R1 recipe: `observe-r1 train CONFIG`.

One rollout step, top to bottom (each stage is one timed call, all on one `Trajectory`):
  publish the weights -> the step's scored groups from the source (training.engine: generated on demand, or
  ahead by an async engine process within rollout.max_staleness versions) -> bonus, advantages x f(d)
  -> old log-probs (only when the update is off-policy) -> reference log-probs -> token advantages
  -> per PPO epoch and mini-batch: gradient accumulation over micro-batches, one optimiser step
  -> log / evaluate / keep the best / checkpoint (training.loop, shared with SFT).

Processes: the step's prompts are drawn identically on every process and shared out so that each
process's k-th mini-batch is its part of the k-th global one (`process_share`); a group never straddles
processes; rewards and advantages are per group, hence local; the loss is normalised by mini-batch totals
summed over processes and DDP averages gradients, so N processes compute the update of 1.

Left out on purpose: value models (GRPO needs none). Reward models and judges are reward terms (training.reward_models).
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
    kl_divergence,
    mismatch_mask,
    observe_advantages,
    overlong_penalty,
    policy_loss,
    tis_weights,
    token_advantages,
)
from observe_r1.algos import zero_variance_groups as zero_variance
from observe_r1.config import Config
from observe_r1.data.dataset import Sample, to_native_row
from observe_r1.data.prompts import system_prompt
from observe_r1.data.sampler import OnlineSampler, PromptSampler, make_sampler
from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import completion_logprobs, reference_of
from observe_r1.rewards import Rewarder
from observe_r1.rewards.compose import merge_results
from observe_r1.rollout.base import Trace, select_groups
from observe_r1.rollout.batch import Trajectory, micro_batches, sequence_inputs
from observe_r1.training import loop, runtime, setup, sharding
from observe_r1.training.checkpoint import Checkpointer, RunState
from observe_r1.training.engine import ASYNC_TIS_CAP, Request, make_source
from observe_r1.training.evaluation import evaluate_on_main
from observe_r1.training.report import GRPO_PANELS
from observe_r1.training.reward_models import with_model_terms
from observe_r1.training.tracking import StageTimer, Tracker

log = logging.getLogger(__name__)

CARRY_FILE = "carry.jsonl"  # with the online sampler: the items not mastered at the end (stages' carry_hard)
ZERO_WEIGHT_STEPS = 3  # rollout steps in a row with f(d) = 0 for every group before the run warns


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


def process_share(prompts: int, per_mini: int, world: int, rank: int) -> list[int]:
    """The positions, among a step's `prompts`, of the prompts process `rank` rolls out. Each global
    mini-batch (`per_mini` consecutive prompts) is split into `world` contiguous parts and this process takes
    part `rank` of each, so its k-th local mini-batch is its part of the k-th global one: N processes then
    take the same optimiser steps as 1, whatever the number of mini-batches and PPO epochs. A group (one
    prompt's n responses) never straddles processes."""
    share = per_mini // world
    return [j * per_mini + rank * share + i for j in range(prompts // per_mini) for i in range(share)]


def train(cfg: Config, given: setup.Inputs | None = None) -> Path:
    """Run GRPO as configured (with datasets, reward callables and callbacks `given` from Python: the
    Python API, observe_r1.recipes.api); returns the output directory."""
    given = with_model_terms(cfg, given or setup.Inputs())
    # reward plug-ins are imported and checked before anything is written
    rewarder = Rewarder.from_config(cfg.reward, given.rewards)
    acc = runtime.make_accelerator()
    cfg = setup.prepare_inputs(cfg, acc, given)
    runtime.seed_everything(cfg.seed)
    encoder = setup.load_encoder(cfg)
    samples, test = setup.load_data(cfg, encoder, given)
    plan = Plan.make(cfg, acc.num_processes, len(samples), acc.process_index)

    policy = setup.build_policy(cfg)
    reference = setup.build_reference(cfg, acc.device)
    policy = runtime.prepare_model(acc, cfg, policy, any(not s.images and not s.videos for s in samples))
    reference = runtime.prepare_reference(acc, cfg, reference)
    optimizer, scheduler = runtime.build_optimizer(cfg, policy, plan.steps * plan.updates_per_step)
    optimizer = runtime.prepare_optimizer(acc, policy, optimizer)
    sampler = make_sampler(cfg.data.sampler, len(samples), cfg.seed, ladder_prior(samples), cfg.data.online_new_share,
                           cfg.data.online_ema)  # fmt: skip
    checkpointer = Checkpointer(cfg, acc, policy, optimizer, scheduler, sampler, encoder)
    run = checkpointer.resume()
    tracker = setup.make_tracker(cfg, run, acc)
    r, system = cfg.rollout, system_prompt(cfg.data.system_prompt)
    asynchronous = r.mode == "async" and r.max_staleness > 0
    backend = None if asynchronous else setup.make_backend(cfg, acc.unwrap_model(policy), encoder)
    timer, amp = StageTimer(), runtime.autocast(acc.device, cfg.model.dtype)
    actor = Actor(
        cfg,
        plan,
        acc,
        encoder,
        policy,
        optimizer,
        scheduler,
        cfg.algorithm.tis_cap or (ASYNC_TIS_CAP if asynchronous and r.correction == "decoupled" else 0.0),
    )

    def share(step: int, attempt: int, drawn: list[int]) -> Request:
        """This process's share of a step's drawn prompts, with their group ids."""
        tries, total = cfg.algorithm.dynamic_sampling_max_tries, r.prompts_per_step
        # globally unique, layout-independent group ids: they also seed the sampling of each response
        ids = [(step * tries + attempt) * total + p for p in plan.positions]
        return Request(step, attempt, [drawn[p] for p in plan.positions], ids, drawn)

    source = make_source(cfg, acc, policy, backend, rewarder, samples, encoder, given.rewards, timer)
    source.request = lambda step, attempt: share(step, attempt, sampler.next(r.prompts_per_step))
    source.steps = plan.steps
    source.resume([share(q["step"], q["attempt"], q["drawn"]) for q in run.pending])

    def draw(step: int, attempt: int) -> Trajectory:
        """The step's groups from the source, n responses each, scored; the sampler hears how it went."""
        scored = source.take(step, attempt)
        got, indices = scored.got, scored.request.indices
        update_sampler(acc, sampler, indices, got.result.correct)
        version = step if scored.version is None else scored.version
        return Trajectory(
            got.samples,
            indices,
            got.images,
            got.rollout,
            got.result,
            bad_prompts=got.bad_prompts,
            versions=[version] * len(indices),
            metrics=scored.metrics,
        )

    def evaluate() -> dict[str, float]:
        return evaluate_on_main(cfg, acc, policy, encoder, test, system, given.rewards)

    log.info("GRPO: %d steps x %d prompts x %d responses, %d optimiser step(s) per step (each on %d responses = "
             "%g prompts; EasyR1/verl count these in prompts, docs/config.md), %d process(es)", plan.steps,
             r.prompts_per_step, r.n, plan.updates_per_step, cfg.optim.mini_batch_size, cfg.optim.mini_batch_size / r.n,
             plan.world)  # fmt: skip
    warmup = warm_up(cfg, source, draw, plan) if run.step == 0 else {}
    with (
        runtime.progress(acc, plan.steps, run.step, "GRPO") as bar,
        loop.interruptible(),
        contextlib.closing(source),
    ):
        while run.step < plan.steps:
            step, started = run.step, time.perf_counter()
            with timer("sync"):  # the policy's weights to whatever generates: version `step`
                source.publish(step)
            with source.generating():
                traj = rollout_and_reward(
                    cfg, acc, draw, step, plan.prompts, encoder.pad_token_id
                )  # timed inside
            with timer("advantage"):
                traj.advantages = advantages(cfg, traj)
            with timer("old_logprob"), amp:
                # on-policy from the policy itself, the update's own forward pass gives them; an engine's
                # tokens are scored by the trainer too (rollout/logprob_diff, truncated IS), except with
                # rollout.correction=behaviour in async mode: the ratio is taken against the engine's
                if asynchronous and r.correction == "behaviour":
                    traj.old_logp = traj.rollout.logprobs
                elif plan.updates_per_step > 1 or traj.rollout.logprobs is not None:
                    traj.old_logp = actor.logprobs(acc.unwrap_model(policy), traj)
            with timer("ref"), amp:
                if cfg.algorithm.kl_mode != "off":
                    with reference_of(acc.unwrap_model(policy), reference) as ref:
                        traj.ref_logp = actor.logprobs(ref, traj)
            with timer("update"), amp:
                kl_stats = add_token_advantages(cfg, traj, acc.device)
                stats = actor.update(traj, run) | kl_stats | engine_mismatch(traj)
            metrics = step_metrics(
                cfg, traj, rewarder.format_term, stats, timer.pop(), time.perf_counter() - started
            )
            metrics["optim/lr"] = scheduler.get_last_lr()[0]
            metrics |= warmup if step == 0 else {}
            metrics["advantage/zero_weight_streak"] = watch_zero_weights(cfg, acc, run, traj)
            metrics = runtime.mean_across_processes(metrics, acc)
            if tracker is not None:
                log_rollouts(cfg, step, traj, tracker)
            run.pending = (
                source.pending()
            )  # async: the requests queued for later steps, saved with a checkpoint
            metrics = loop.end_of_step(
                cfg, run, metrics, tracker, checkpointer, evaluate if test else None, plan.steps
            )
            bar(step, metrics)
            if loop.stop_requested(acc, given, step, metrics, run, checkpointer):
                break
    loop.finish(cfg, acc, run, tracker, checkpointer, evaluate if test else None, "GRPO run", GRPO_PANELS)
    if acc.is_main_process and isinstance(sampler, OnlineSampler):
        write_unmastered(Path(cfg.logging.output_dir), samples, sampler)
    rewarder.close()
    return Path(cfg.logging.output_dir)


# ------------------------------------------------------------------ rollout + rewards


def warm_up(cfg: Config, source: Any, draw, plan: Plan) -> dict[str, float]:
    """WSRL's warm-up: `algorithm.warmup_rollout_steps` rollout steps of the initial policy, scored, before the
    first update. Nothing is trained on them; the prompt sampler hears their accuracy, so the online
    sampler's pass rates (its revisits, the carried items of a later stage) start measured, not guessed.
    Returns `warmup/accuracy` and `warmup/reward`, logged with step 0. A run killed during the warm-up
    starts it again (the first checkpoint comes after step 0). Synchronous rollouts only (config check)."""
    steps = cfg.algorithm.warmup_rollout_steps
    if not steps:
        return {}
    source.publish(0)
    accuracy, reward = [], []
    with source.generating():
        for w in range(steps):
            traj = draw(plan.steps + w, 0)  # group ids past the run's own: the same prompts sample afresh
            accuracy.append(float(traj.rewards.correct.float().mean()))
            reward.append(float(traj.rewards.total.mean()))
    log.info("warm-up: %d rollout steps of the initial policy, accuracy %.3f", steps, sum(accuracy) / steps)
    return runtime.mean_across_processes(
        {"warmup/accuracy": sum(accuracy) / steps, "warmup/reward": sum(reward) / steps}, source.acc
    )


def rollout_and_reward(cfg: Config, acc: Any, draw, step: int, need: int, pad_token_id: int) -> Trajectory:
    """Generate and score this process's prompts. With DAPO dynamic sampling, groups whose rewards all
    agree are replaced by groups of fresh prompts (all processes draw together, at most
    `dynamic_sampling_max_tries` draws); slots still empty after the last draw keep zero-variance groups,
    which carry no advantage, so batch shapes stay fixed on every process."""
    a, n = cfg.algorithm, cfg.rollout.n
    if not a.dynamic_sampling:
        return draw(step, 0)
    draws: list[Trajectory] = []
    kept: list[tuple[Trajectory, list[int]]] = []
    for attempt in range(a.dynamic_sampling_max_tries):
        d = draw(step, attempt)
        draws.append(d)
        varied = ~zero_variance(d.rewards.total.view(-1, n))
        have = sum(len(g) for _, g in kept)
        kept.append((d, [g for g in range(need) if varied[g]][: need - have]))
        if runtime.all_processes(acc, sum(len(g) for _, g in kept) >= need):
            break
    return refill(draws, kept, need, n, pad_token_id)


def refill(draws: list[Trajectory], kept: list[tuple[Trajectory, list[int]]], need: int, n: int,
           pad_token_id: int = 0) -> Trajectory:  # fmt: skip
    """One trajectory of `need` groups: the kept (varied) groups of each draw in order, topped up with the
    zero-variance groups of the draws, first draw first."""
    kept = list(kept)
    for d in draws:
        have = sum(len(g) for _, g in kept)
        taken = {g for k, gs in kept if k is d for g in gs}
        kept.append((d, [g for g in range(need) if g not in taken][: need - have]))
    kept = [(d, g) for d, g in kept if g]
    rows = [(d, [g * n + j for g in gs for j in range(n)]) for d, gs in kept]
    return Trajectory(
        samples=[d.samples[g] for d, gs in kept for g in gs],
        indices=[d.indices[g] for d, gs in kept for g in gs],
        images=[d.images[g] for d, gs in kept for g in gs],
        rollout=select_groups([(d.rollout, gs) for d, gs in kept], n, pad_token_id),
        rewards=merge_results([(d.rewards, rs) for d, rs in rows]),
        tries=len(draws),
        bad_prompts=sum(d.bad_prompts for d in draws),
        versions=[d.versions[g] for d, gs in kept for g in gs] if all(d.versions for d, _ in kept) else [],
        metrics=draws[0].metrics,
    )


def update_sampler(
    acc: Any, sampler: PromptSampler | OnlineSampler, indices: list[int], correct: torch.Tensor
) -> None:
    """Tell the sampler each group's accuracy (all processes' groups, so every copy of it stays the same)."""
    accuracy = correct.view(len(indices), -1).float().mean(1)
    where = torch.tensor(indices, dtype=torch.float64)
    if acc.num_processes > 1:
        accuracy = acc.gather(accuracy.to(acc.device)).cpu()
        where = acc.gather(where.to(acc.device)).cpu()
    sampler.update([int(i) for i in where.tolist()], accuracy.tolist())


def ladder_prior(samples: list[Sample]) -> list[float] | None:
    """Starting pass rates for the online sampler: 1 - difficulty for rows with a ladder difficulty (0.5 for
    the others), or None when no row has one."""
    known = [isinstance(s.metadata.get("difficulty"), int | float) for s in samples]
    if not any(known):
        return None
    return [1.0 - float(s.metadata["difficulty"]) if k else 0.5 for s, k in zip(samples, known, strict=True)]


def write_unmastered(out: Path, samples: list[Sample], sampler: OnlineSampler) -> Path:
    """OUTPUT/carry.jsonl: the items reached and not mastered (pass rate below 1), hardest first, each with
    difficulty = 1 - its pass rate: a later stage with `carry_hard` trains on them again (QwenLong-L1's
    retrospective sampling, through the online sampler's pass-rate priors)."""
    reached = [i for i in range(sampler.frontier) if sampler.seen[i] and sampler.pass_rate[i] < 1]
    reached.sort(key=lambda i: float(sampler.pass_rate[i]))
    rows = [to_native_row(samples[i], out / "carry-images")
            | {"id": f"{samples[i].id}@carried", "difficulty": 1.0 - float(sampler.pass_rate[i])} for i in reached]  # fmt: skip
    path = out / CARRY_FILE
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ------------------------------------------------------------------ advantages


def advantages(cfg: Config, traj: Trajectory):
    """Observe-R1's sequence advantages of this step (algos.observe_advantages), groups as rows; with
    `reward.combine: per_objective` each reward term is an objective, normalised on its own (`pareto`: ranked by
    Pareto non-domination)."""
    n, rc, a = cfg.rollout.n, cfg.reward, cfg.algorithm
    objectives = weights = None
    bonus_objective = 0
    if rc.combine in ("per_objective", "pareto"):
        names = list(traj.rewards.terms)  # the reward terms, in the config's order
        objectives = torch.stack([traj.rewards.terms[k] for k in names], -1).view(-1, n, len(names))
        weights = torch.tensor([t.weight for t in rc.terms])
        bonus_objective = names.index(rc.correct_term)
    lengths = traj.rollout.model_lengths.view(-1, n)  # the model's own tokens (not a tool's observations)
    penalty = (
        overlong_penalty(lengths, cfg.rollout.max_new_tokens, a.overlong_buffer, a.overlong_penalty)
        if a.overlong_buffer
        else None
    )
    return observe_advantages(
        traj.rewards.total.view(-1, n),
        traj.rewards.correct.view(-1, n),
        lengths,
        rc.bonus_coef,
        rc.bonus_min_length,
        a.estimator,
        a.difficulty_weighting,
        a.sigma,
        objectives,
        weights,
        bonus_objective,
        penalty,
        rc.combine == "pareto",
    )


def add_token_advantages(cfg: Config, traj: Trajectory, device: torch.device) -> dict[str, float]:
    """The loss mask and [B, T] token advantages. With `kl_mode: reward`, the k-estimate of KL(rollout policy ||
    reference) is a per-token penalty inside the return (the original's OpenRLHF way); when the update is
    on-policy (no old log-probs), `Actor.update` adds that penalty from its own forward pass."""
    a = cfg.algorithm
    assert traj.advantages is not None
    mask = traj.rollout.model_mask.to(device, torch.float32)  # multi-turn: observations get no loss
    if a.mask_truncated:
        mask = mask * (~traj.rollout.truncated).to(device, torch.float32)[:, None]
    traj.mask = mask
    sequence = traj.advantages.sequence.to(device)
    if a.kl_mode == "reward" and traj.old_logp is not None:
        assert traj.ref_logp is not None
        kl = kl_divergence(traj.old_logp, traj.ref_logp, a.kl_estimator)
        traj.token_advantages = token_advantages(sequence, mask, kl, a.kl_coef)
        return {"actor/kl_ref": float((kl * mask).sum() / mask.sum().clamp(min=1))}
    traj.token_advantages = token_advantages(sequence, mask)
    return {}


def engine_mismatch(traj: Trajectory) -> dict[str, float]:
    """How far the engine's log-probs of its own tokens are from the trainer's at the same weights:
    `rollout/logprob_diff/mean` and `/max` over response tokens (none for the HF backend: it is the trainer)."""
    if traj.rollout.logprobs is None or traj.old_logp is None or traj.mask is None:
        return {}
    mask = traj.mask.cpu()
    diff = (traj.old_logp.cpu() - traj.rollout.logprobs).abs() * mask
    out = {
        "rollout/logprob_diff/mean": float(diff.sum() / mask.sum().clamp(min=1)),
        "rollout/logprob_diff/max": float(diff.max()),
    }
    if "async/staleness" in traj.metrics:  # async: the gap by how many versions the engine was behind
        out[f"rollout/logprob_diff/staleness_{int(traj.metrics['async/staleness'])}"] = out[
            "rollout/logprob_diff/mean"
        ]
    return out


def watch_zero_weights(cfg: Config, acc: Any, run: RunState, traj: Trajectory) -> float:
    """Count the rollout steps in a row where f(d) was 0 for every group on every process (no gradient at
    all) and warn loudly from the third: a dense or partial-credit reward never makes a response "correct"
    at the default threshold, so every group looks all-wrong. Returns the streak, logged as a metric."""
    assert traj.advantages is not None
    if not cfg.algorithm.difficulty_weighting:
        return 0.0
    all_zero = runtime.all_processes(acc, bool((traj.advantages.weights == 0).all()))
    run.zero_weight_streak = run.zero_weight_streak + 1 if all_zero else 0
    if (
        run.zero_weight_streak >= ZERO_WEIGHT_STEPS
        and run.zero_weight_streak % (10 * ZERO_WEIGHT_STEPS) == ZERO_WEIGHT_STEPS
    ):
        log.warning(
            "no gradient for %d steps in a row: f(d) = 0 for every group, because no group had both correct and "
            "wrong responses (correct: reward term %r >= reward.correct_threshold=%g). With a dense or "
            "partial-credit reward set reward.correct_threshold (e.g. 0.5) or algorithm.difficulty_weighting=false; "
            "otherwise the data is too hard or too easy for this model.",
            run.zero_weight_streak, cfg.reward.correct_term, cfg.reward.correct_threshold,
        )  # fmt: skip
    return float(run.zero_weight_streak)


# ------------------------------------------------------------------ log-probs and the update


@dataclass
class Actor:
    """The policy under training with its optimiser: log-probs in the update's micro-batches, and the update."""

    cfg: Config
    plan: Plan
    acc: Any
    encoder: ChatEncoder
    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    tis_cap: float = 0.0  # algorithm.tis_cap, or the async decoupled correction's default

    def micro_batches(self, traj: Trajectory) -> list[list[list[int]]]:
        return micro_batches(traj.rollout, self.plan.mini, self.plan.micro)

    @torch.no_grad()
    def logprobs(self, model: torch.nn.Module, traj: Trajectory) -> torch.Tensor:
        """[B, T] completion log-probs, in the same micro-batches as the update (so they match it exactly)."""
        rollout = traj.rollout
        out = torch.zeros(rollout.completion_ids.shape, device=self.acc.device)
        for idx in [idx for micros in self.micro_batches(traj) for idx in micros]:
            inputs = sequence_inputs(rollout, idx, self.encoder)
            logp, _ = completion_logprobs(
                model, inputs, self.cfg.rollout.temperature, packed=self.cfg.model.packing
            )
            out[idx, : logp.shape[1]] = logp
        sharding.reshard(model)  # FSDP keeps a root unit gathered after a forward until a backward
        return out

    def update(self, traj: Trajectory, run: RunState) -> dict[str, float]:
        """PPO epochs x mini-batches; each mini-batch is one optimiser step, accumulated over micro-batches.
        On-policy (no `old_logp`) the rollout policy's log-probs are this pass's, detached: no separate pass."""
        cfg, acc, a = self.cfg, self.acc, self.cfg.algorithm
        assert traj.mask is not None and traj.token_advantages is not None and traj.advantages is not None
        mask, seq_adv = traj.mask, traj.advantages.sequence.to(acc.device)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        stats: dict[str, list[float]] = defaultdict(list)
        for _ in range(cfg.optim.ppo_epochs):
            for micros in self.micro_batches(traj):
                denominator = runtime.global_denominator(acc, [mask[i] for i in micros], a.loss_agg,
                                                         cfg.rollout.max_new_tokens)  # fmt: skip
                for k, idx in enumerate(micros):
                    sync = contextlib.nullcontext() if k == len(micros) - 1 else acc.no_sync(self.policy)
                    with sync:
                        inputs = sequence_inputs(traj.rollout, idx, self.encoder)
                        logp, entropy = completion_logprobs(self.policy, inputs, cfg.rollout.temperature, entropy=True,
                                                            entropy_grad=a.entropy_coef > 0,
                                                            packed=cfg.model.packing)  # fmt: skip
                        assert entropy is not None
                        width = logp.shape[1]
                        m, adv = mask[idx, :width], traj.token_advantages[idx, :width]
                        old = traj.old_logp[idx, :width] if traj.old_logp is not None else logp.detach()
                        if a.kl_mode == "reward" and traj.old_logp is None:
                            assert traj.ref_logp is not None
                            kl = kl_divergence(old, traj.ref_logp[idx, :width], a.kl_estimator)
                            adv = token_advantages(seq_adv[idx], m, kl, a.kl_coef)
                            stats["actor/kl_ref"].append(float((kl * m).sum() / m.sum().clamp(min=1)))
                        weights = engine_weights(a, traj, idx, old, m, stats, self.tis_cap)
                        loss, s = policy_loss(
                            logp,
                            old,
                            adv,
                            m,
                            a.clip_low,
                            a.clip_high,
                            a.dual_clip,
                            a.loss_agg,
                            denominator,
                            weights,
                            a.policy_loss,
                        )
                        if a.kl_mode == "loss":
                            assert traj.ref_logp is not None
                            kl = kl_divergence(logp, traj.ref_logp[idx, :width], a.kl_estimator)
                            loss = loss + a.kl_coef * aggregate(kl, m, a.loss_agg, denominator)
                            stats["actor/kl_ref"].append(
                                float((kl.detach() * m).sum() / m.sum().clamp(min=1))
                            )
                        if a.entropy_coef:
                            loss = loss - a.entropy_coef * aggregate(entropy, m, a.loss_agg, denominator)
                        acc.backward(
                            loss * self.plan.world
                        )  # DDP averages; the denominator covers all processes
                    stats["actor/loss"].append(float(loss.detach()))
                    stats["actor/entropy"].append(float((entropy.detach() * m).sum() / m.sum().clamp(min=1)))
                    for key, value in vars(s).items():
                        stats[f"actor/{key}"].append(value)
                grad_norm = runtime.optimizer_step(acc, params, self.optimizer, self.scheduler, cfg, run)
                stats["actor/grad_norm"].append(grad_norm)
                if not math.isfinite(grad_norm):
                    stats["optim/skipped_steps"].append(1.0)
        out = {k: sum(v) / len(v) for k, v in stats.items() if k != "optim/skipped_steps"}
        out["optim/skipped_steps"] = float(len(stats.get("optim/skipped_steps", [])))
        return out


def engine_weights(
    a: Any,
    traj: Trajectory,
    idx: list[int],
    old: torch.Tensor,
    mask: torch.Tensor,
    stats: dict[str, list[float]],
    tis_cap: float,
) -> torch.Tensor | None:
    """[b, T] per-token loss weights for tokens an engine sampled (its log-probs differ from the trainer's, by
    numerics or, in async mode, by policy versions): truncated IS (`tis_cap`) times the mismatch mask
    (`algorithm.mismatch_band`); None without an engine or either setting. Their means go to `stats`."""
    if traj.rollout.logprobs is None or not (tis_cap or a.mismatch_band):
        return None
    engine = traj.rollout.logprobs[idx, : old.shape[1]].to(old.device)
    weights = torch.ones_like(old)
    tokens = mask.sum().clamp(min=1)
    if tis_cap:
        weights = tis_weights(old, engine, tis_cap)
        stats["actor/tis_weight_mean"].append(float((weights * mask).sum() / tokens))
    if a.mismatch_band:
        kept = mismatch_mask(old, engine, *a.mismatch_band)
        stats["actor/mismatch_masked_share"].append(float(((1 - kept) * mask).sum() / tokens))
        weights = weights * kept
    return weights


# ------------------------------------------------------------------ logging


def step_metrics(cfg: Config, traj: Trajectory, format_term: str | None, stats: dict, times: dict,
                 seconds: float) -> dict[str, float]:  # fmt: skip
    assert traj.advantages is not None
    adv, rollout, n = traj.advantages, traj.rollout, cfg.rollout.n
    lengths = rollout.model_lengths.float()
    correct = adv.correct.flatten()
    m: dict[str, float] = dict(traj.rewards.metrics)
    if format_term is not None:
        m["format_rate"] = float((traj.rewards.terms[format_term] == 1).float().mean())
    hits = adv.correct.sum(1)
    m |= {
        "accuracy": float(correct.float().mean()),
        "reward/shaped/mean": float(adv.shaped.mean()),
        "bonus/group_rate": float((adv.shaped != adv.rewards).any(1).float().mean()),
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max()),
        "response/length_correct_mean": float(lengths[correct].mean()) if correct.any() else math.nan,
        "response/truncated_rate": float(rollout.truncated.float().mean()),
        "advantage/weight_mean": float(adv.weights.mean()),
        "advantage/zero_weight_groups": float((adv.weights == 0).float().mean()),
        "advantage/zero_variance_groups": float(zero_variance(adv.shaped).float().mean()),
        "data/bad_prompts": float(traj.bad_prompts),
        "dynamic_sampling/tries": float(traj.tries),
        "perf/generated_tokens": float(lengths.sum()),
        "perf/tokens_per_s": float(lengths.sum()) / max(times.get("time/rollout", 0.0), 1e-9),
        "perf/step_s": seconds,
    }
    m |= {f"difficulty/correct_{k}": float((hits == k).float().mean()) for k in range(n + 1)}
    m |= tool_metrics(rollout.traces)
    m |= traj.metrics  # async: staleness, waits, the engine's busy and idle time, the queue
    if cfg.algorithm.overlong_buffer:  # DAPO's shaping: what it took off the rewards
        penalty = adv.rewards.flatten() - traj.rewards.total
        m["reward/overlong_penalty/mean"] = float(penalty.mean())
        m["reward/overlong_penalty/rate"] = float((penalty < 0).float().mean())
    return m | stats | times


def tool_metrics(traces: list[Trace] | None) -> dict[str, float]:
    """Multi-turn rollouts: tool calls, errors (by kind), timeouts, turns, hints and observation tokens per
    response, and the share of responses that called a tool."""
    if traces is None:
        return {}
    n = len(traces)
    calls = [c for t in traces for c in t.calls]
    out = {
        "tools/calls_per_response": len(calls) / n,
        "tools/used_rate": sum(bool(t.calls) for t in traces) / n,
        "tools/errors_per_response": sum(bool(c.error) for c in calls) / n,
        "tools/timeouts_per_response": sum(c.kind == "timeout" for c in calls) / n,
        "tools/turns_mean": sum(t.turns for t in traces) / n,
        "tools/hints_per_response": sum(t.hints for t in traces) / n,
        "tools/observation_tokens_mean": sum(t.observation_tokens for t in traces) / n,
    }
    for kind in ("parse", "unknown_tool", "bad_arguments", "tool_error"):
        out[f"tools/errors/{kind}"] = sum(c.kind == kind for c in calls) / n
    return out


def log_rollouts(cfg: Config, step: int, traj: Trajectory, tracker: Tracker) -> None:
    """Every `logging.dump_rollouts_every` steps all responses to OUTPUT/rollouts/step-N.jsonl; every
    `logging.log_completions_every` steps `logging.log_completions` of them, spread over the groups, to
    TensorBoard / wandb."""
    c = cfg.logging
    dump = c.dump_rollouts_every and step % c.dump_rollouts_every == 0
    show = c.log_completions_every and step % c.log_completions_every == 0
    if not (dump or show):
        return
    rows = rollout_rows(step, traj)
    if dump:
        out = Path(c.output_dir) / "rollouts"
        out.mkdir(exist_ok=True)
        (out / f"step-{step:06d}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if show:
        stride = max(1, len(rows) // c.log_completions)
        shown = [{k: row[k] for k in ("id", "answer", "response", "reward", "correct", "advantage", "length")}
                 | {f"reward/{k}": v for k, v in row["terms"].items()} for row in rows[::stride][: c.log_completions]]  # fmt: skip
        tracker.log_completions(step, shown)


def parts(versions: torch.Tensor) -> list[list[int]]:
    """[[first token, version], ...]: where each policy version's part of a partial rollout begins."""
    v = versions.tolist()
    return [[i, x] for i, x in enumerate(v) if i == 0 or x != v[i - 1]]


def rollout_rows(step: int, traj: Trajectory) -> list[dict[str, Any]]:
    """One row per response: its prompt, answer, text, length, rewards (shaped and per term) and advantage."""
    assert traj.advantages is not None
    r, adv = traj.rollout, traj.advantages
    rows = []
    for i, text in enumerate(r.texts):
        s = traj.samples[r.prompt_index[i]]
        row: dict[str, Any] = {
            "step": step,
            "group_id": r.group_ids[i],
            "id": s.id,
            "question": s.question,
            "images": [im if isinstance(im, str) else "<bytes>" for im in s.images],
            "answer": s.answer,
            "response": text,
            "length": int(r.model_lengths[i]),
            "truncated": bool(r.truncated[i]),
            "reward": float(adv.shaped.flatten()[i]),
            "terms": {k: float(v[i]) for k, v in traj.rewards.terms.items()},
            "correct": bool(adv.correct.flatten()[i]),
            "advantage": float(adv.sequence[i]),
            "policy_version": traj.versions[r.prompt_index[i]] if traj.versions else step,
        }
        if r.versions is not None:  # a partial rollout: the version of each part
            row["policy_versions"] = parts(r.versions[i, : int(r.lengths[i])])
        if r.traces is not None:
            row["model_text"] = r.traces[i].model_text
            row["tool_calls"] = [c.as_row() for c in r.traces[i].calls]
        rows.append(row)
    return rows
