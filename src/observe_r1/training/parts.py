"""What the recipes besides GRPO share: the start of a recipe that samples on one process (DPO, rejection
sampling) and its sampling, and the trainable parts of a supervised one (SFT, DPO)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from accelerate import Accelerator

from observe_r1.config import Config, ConfigError
from observe_r1.data.dataset import Sample
from observe_r1.data.sampler import PromptSampler, make_sampler
from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import load_model
from observe_r1.rewards import Rewarder
from observe_r1.rollout.base import SamplingParams
from observe_r1.rollout.hf import HFRollout
from observe_r1.rollout.multiturn import with_tools
from observe_r1.training import runtime, setup
from observe_r1.training.checkpoint import Checkpointer, RunState
from observe_r1.training.reward_models import with_model_terms
from observe_r1.training.scoring import ScoredRollout, generate_and_score
from observe_r1.training.tracking import Tracker


class SamplingStart(NamedTuple):
    cfg: Config  # resolved (tiny model and synthetic data built, model.path: cold_start found)
    acc: Accelerator
    encoder: ChatEncoder
    train: list[Sample]
    test: list[Sample]
    rewarder: Rewarder


def start_sampling(cfg: Config, given: setup.Inputs, name: str) -> SamplingStart:
    """Reward plug-ins checked first, one process only, inputs built, encoder and data loaded."""
    rewarder = Rewarder.from_config(cfg.reward, with_model_terms(cfg, given).rewards)
    acc = runtime.make_accelerator()
    if acc.num_processes > 1:
        raise ConfigError(f"{name} samples on one process: run it without torchrun / accelerate launch")
    cfg = setup.prepare_inputs(cfg, acc, given)
    runtime.seed_everything(cfg.seed)
    encoder = setup.load_encoder(cfg)
    train, test = setup.load_data(cfg, encoder, given)
    return SamplingStart(cfg, acc, encoder, train, test, rewarder)


class Trainee(NamedTuple):
    """The policy under supervised training with everything its loop touches (unpacks in this order)."""

    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: PromptSampler
    checkpointer: Checkpointer
    run: RunState  # resumed from the output directory's checkpoints when there are some
    tracker: Tracker | None
    params: list[torch.nn.Parameter]  # the trainable ones


def sample_responses(
    cfg: Config, model_path: str, samples: list[Sample], rewarder: Rewarder, n: int, system: str
) -> list[ScoredRollout]:
    """`n` responses to each sample from the checkpoint at `model_path` (HF generate with `rollout.*`'s
    sampling settings), scored, in batches of `rollout.prompts_per_step` prompts, on this process alone."""
    r = cfg.rollout
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder = setup.load_encoder(cfg, model_path)
    model = load_model(model_path, trust_remote_code=cfg.model.trust_remote_code)
    backend = with_tools(cfg, HFRollout(model.to(device).eval(), encoder), encoder)
    sampling = SamplingParams(n, r.temperature, r.top_p, r.top_k, r.max_new_tokens, chunk_size=r.chunk_size)
    out = []
    with torch.no_grad(), runtime.autocast(device, cfg.model.dtype, generation=True):
        for start in range(0, len(samples), r.prompts_per_step):
            batch = samples[start : start + r.prompts_per_step]
            ids = list(range(start, start + len(batch)))
            out.append(generate_and_score(backend, encoder, rewarder, batch, ids, sampling, system, cfg.seed))
    return out


def trainee(
    cfg: Config,
    acc: Accelerator,
    encoder: ChatEncoder,
    samples: list[Sample],
    steps: int,
    score_head: bool = False,
) -> Trainee:
    """Policy (prepared for the processes), optimiser and schedule over `steps`, a fixed-order sampler over
    `samples` (`data.sampler`; online has no pass rates to follow here), checkpointer, resumed state, tracker.
    `score_head`: the policy is a reward model (`setup.build_policy`)."""
    if cfg.data.sampler == "online":
        raise ConfigError("data.sampler=online follows rollout pass rates; a supervised recipe has none: use "
                          "shuffled or sequential")  # fmt: skip
    policy = runtime.prepare_model(
        acc, cfg, setup.build_policy(cfg, score_head), any(not s.images and not s.videos for s in samples)
    )
    optimizer, scheduler = runtime.build_optimizer(cfg, policy, steps)
    optimizer = runtime.prepare_optimizer(acc, policy, optimizer)
    sampler = make_sampler(cfg.data.sampler, len(samples), cfg.seed)
    assert isinstance(sampler, PromptSampler)
    checkpointer = Checkpointer(cfg, acc, policy, optimizer, scheduler, sampler, encoder)
    run = checkpointer.resume()
    params = [p for p in policy.parameters() if p.requires_grad]
    return Trainee(
        policy, optimizer, scheduler, sampler, checkpointer, run, setup.make_tracker(cfg, run, acc), params
    )


def supervised_batches(cfg: Config, world: int, rows: int) -> tuple[int, int]:
    """(rows per process per optimiser step, optimiser steps) of a supervised recipe over `rows` rows:
    `optim.mini_batch_size` split evenly into `world` processes x micro-batches; `optim.max_steps`, else
    `optim.epochs` passes."""
    o = cfg.optim
    if o.mini_batch_size % world or (o.mini_batch_size // world) % o.micro_batch_size:
        raise ValueError(
            f"optim.mini_batch_size={o.mini_batch_size} must split into {world} process(es) x micro-batches"
        )
    return o.mini_batch_size // world, o.max_steps or max(1, o.epochs * rows // o.mini_batch_size)
