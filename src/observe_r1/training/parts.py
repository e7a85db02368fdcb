"""What the recipes besides GRPO share at their start: the run's inputs for a recipe that samples on one
process (DPO, rejection sampling), and the trainable parts of a supervised one (SFT, DPO)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from accelerate import Accelerator

from observe_r1.config import Config, ConfigError
from observe_r1.data.dataset import Sample
from observe_r1.data.sampler import PromptSampler, make_sampler
from observe_r1.models.inputs import ChatEncoder
from observe_r1.rewards import Rewarder
from observe_r1.training import runtime, setup
from observe_r1.training.checkpoint import Checkpointer, RunState
from observe_r1.training.tracking import Tracker


@dataclass
class SamplingStart:
    cfg: Config  # resolved (tiny model and synthetic data built, model.path: cold_start found)
    acc: Accelerator
    encoder: ChatEncoder
    train: list[Sample]
    test: list[Sample]
    rewarder: Rewarder


def start_sampling(cfg: Config, given: setup.Inputs, name: str) -> SamplingStart:
    """Reward plug-ins checked first, one process only, inputs built, encoder and data loaded."""
    rewarder = Rewarder.from_config(cfg.reward, given.rewards)
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


def trainee(
    cfg: Config, acc: Accelerator, encoder: ChatEncoder, samples: list[Sample], steps: int
) -> Trainee:
    """Policy (prepared for the processes), optimiser and schedule over `steps`, a fixed-order sampler over
    `samples` (`data.sampler`; online has no pass rates to follow here), checkpointer, resumed state, tracker."""
    if cfg.data.sampler == "online":
        raise ConfigError("data.sampler=online follows rollout pass rates; a supervised recipe has none: use "
                          "shuffled or sequential")  # fmt: skip
    policy = runtime.prepare_model(acc, cfg, setup.build_policy(cfg), any(not s.images for s in samples))
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
