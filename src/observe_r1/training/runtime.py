"""The run's runtime: processes (accelerate DDP or FSDP2), seeds, precision, the optimiser and its step, batch splitting,
metrics across processes and the progress bar. Imports config, algos and training.checkpoint."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.distributed.tensor import DTensor
from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

from observe_r1.algos import loss_denominator
from observe_r1.config import Config, ConfigError
from observe_r1.training import sharding
from observe_r1.training.checkpoint import RunState, latest_checkpoint

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator() -> Accelerator:
    ddp = DistributedDataParallelKwargs(find_unused_parameters=False)
    acc = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])
    asked = processes_asked_of_accelerate(os.environ, parent_args())
    if asked > acc.num_processes:
        log.warning("`accelerate launch --num_processes %d` started ONE process: without --multi_gpu accelerate "
                    "runs its single-process launcher (on CPU as well). Add --multi_gpu (it uses gloo on CPU), or "
                    "use torchrun --nproc_per_node %d (docs/training.md)", asked, asked)  # fmt: skip
    return acc


def processes_asked_of_accelerate(env: Mapping[str, str], launcher_args: list[str]) -> int:
    """The `--num_processes` given to an `accelerate launch` that started this process with its single-process
    launcher (it sets ACCELERATE_USE_CPU but no WORLD_SIZE); 0 when not launched that way."""
    if "ACCELERATE_USE_CPU" not in env or "WORLD_SIZE" in env or "launch" not in launcher_args:
        return 0
    for i, arg in enumerate(launcher_args):
        key, _, value = arg.partition("=")
        if key in ("--num_processes", "--num-processes"):
            value = value or (launcher_args[i + 1] if i + 1 < len(launcher_args) else "")
            return int(value) if value.isdigit() else 0
    return 0


def parent_args() -> list[str]:
    """The command line of the process that started this one (Linux; elsewhere empty)."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def prepare_model(
    acc: Accelerator, cfg: Config, model: torch.nn.Module, text_only_prompts: bool
) -> torch.nn.Module:
    """`parallel.strategy`: DDP-wrap the model (accelerate), or shard it with FSDP2. Build the optimiser
    after this (`prepare_optimizer`): FSDP replaces the parameters by their shards.
    A text-only prompt leaves the vision tower without gradients, which DDP must be told about (it costs an
    extra graph traversal, so only then); under FSDP every process runs the same units in the same order: the
    vision tower runs on a blank where a micro-batch has no image or video (`models.policy.encode_visuals`)."""
    if cfg.parallel.offload and acc.device.type != "cuda":
        raise ConfigError("parallel.offload needs GPUs: it keeps the shards in CPU memory between their uses on "
                          "the GPU (on CPU they are there already); remove it")  # fmt: skip
    if cfg.parallel.strategy == "fsdp" and acc.num_processes == 1:
        log.info("parallel.strategy=fsdp with one process: nothing to shard, the model stays whole")
    elif cfg.parallel.strategy == "fsdp":
        # sharded first, then moved: each GPU receives its shards, never the whole fp32 model
        return sharding.shard(model, cfg, fsdp_compute_dtype(cfg, acc.device)).to(acc.device)
    if acc.ddp_handler is not None:
        acc.ddp_handler.find_unused_parameters = text_only_prompts
    return acc.prepare(model)


def prepare_reference(
    acc: Accelerator, cfg: Config, reference: torch.nn.Module | None
) -> torch.nn.Module | None:
    """The frozen KL reference is sharded like the policy under FSDP (DDP: a whole copy per process)."""
    if reference is None or cfg.parallel.strategy != "fsdp":
        return reference
    if acc.num_processes == 1:
        return reference.to(acc.device)
    return sharding.shard(reference, cfg, None).to(acc.device)


def prepare_optimizer(acc: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    return optimizer if sharding.is_sharded(model) else acc.prepare(optimizer)


def fsdp_compute_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """FSDP's parameter dtype for compute: bf16 on GPU when the run computes in bf16, else the fp32 weights."""
    if device.type != "cuda":
        return None
    bf16 = cfg.model.dtype == "bfloat16" or cfg.model.dtype == "auto"
    return torch.bfloat16 if bf16 else None


def build_optimizer(
    cfg: Config, model: torch.nn.Module, total_steps: int
) -> tuple[torch.optim.Optimizer, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    warmup = math.ceil(o.warmup_ratio * total_steps)
    if o.schedule == "cosine":
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, warmup, max(total_steps, 1), min_lr=o.min_lr
        )
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    return optimizer, scheduler


def autocast(device: torch.device, dtype: str, generation: bool = False) -> contextlib.AbstractContextManager:
    """`model.dtype` as autocast (weights stay fp32): bf16 on GPU by default, fp32 on CPU unless asked. On CPU
    `generation` stays fp32 whatever is asked: there autocast makes HF `generate` about 2x slower, while it
    speeds the training passes up 2-2.5x on CPUs with bf16 (docs/results.md)."""
    low = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if dtype == "auto" and device.type == "cuda":
        low = torch.bfloat16
    if generation and device.type != "cuda":
        low = None
    return torch.autocast(device.type, dtype=low) if low is not None else contextlib.nullcontext()


def reference_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    """`model.reference_dtype`; auto: bf16 when the policy computes in bf16 (GPU), else fp32."""
    if cfg.model.reference_dtype != "auto":
        return getattr(torch, cfg.model.reference_dtype)
    bf16 = cfg.model.dtype == "bfloat16" or (cfg.model.dtype == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else torch.float32


def chunks(seq, size: int) -> list[list[int]]:
    """Consecutive index lists of at most `size` (mini- and micro-batches)."""
    seq = list(seq)
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def global_denominator(acc: Accelerator, masks: list[torch.Tensor], agg: str, max_len: int) -> float:
    """The loss denominator of one mini-batch (given as its micro-batches' masks), over all processes."""
    local = loss_denominator(masks, agg, max_len)
    if acc.num_processes == 1:
        return local
    if agg == "token_mean":  # token counts differ between processes: sum them
        return float(acc.reduce(torch.tensor([local], device=acc.device), reduction="sum").item())
    return local * acc.num_processes  # every process has the same number of sequences


def optimizer_step(acc: Accelerator, params: list, optimizer, scheduler, cfg: Config, run: RunState) -> float:
    """Clip and step; a non-finite gradient norm skips the step (counted in `run.nonfinite_streak`), and
    `optim.max_nonfinite_steps` skipped optimiser steps in a row stop the run. Nothing is saved then: the
    weights may be what went wrong, and the checkpoints already saved hold finite weights.
    Returns the gradient norm (global: DDP has already averaged the gradients)."""
    grad_norm = acc.clip_grad_norm_(params, cfg.optim.grad_clip or math.inf)
    if isinstance(grad_norm, DTensor):  # FSDP: the norm over every process's shards
        grad_norm = grad_norm.full_tensor()
    if torch.isfinite(grad_norm):
        optimizer.step()
        scheduler.step()
        run.nonfinite_streak = 0
    else:
        run.nonfinite_streak += 1
        log.warning(
            "step %d: non-finite loss or gradient (norm %s); optimiser step skipped", run.step, grad_norm
        )
    optimizer.zero_grad(set_to_none=True)
    if run.nonfinite_streak >= cfg.optim.max_nonfinite_steps:
        last = latest_checkpoint(cfg.logging.output_dir)
        raise RuntimeError(
            f"{run.nonfinite_streak} optimiser steps in a row had a non-finite loss or gradient; stopped at step "
            f"{run.step} (last checkpoint: {last or 'none'}). Lower optim.lr or check the data and rewards."
        )
    return float(grad_norm)


def mean_across_processes(metrics: dict[str, float], acc: Accelerator) -> dict[str, float]:
    if acc.num_processes == 1:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=acc.device)
    t = acc.reduce(t, reduction="mean")
    return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}


def all_processes(acc: Accelerator, flag: bool) -> bool:
    """True when `flag` holds on every process."""
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([float(flag)], device=acc.device)
    return bool(acc.reduce(t, reduction="sum").item() == acc.num_processes)


@contextlib.contextmanager
def progress(acc: Accelerator, total: int, done: int, name: str) -> Iterator:
    """A progress bar with step, reward / loss, accuracy and ETA on the main process (a log line every 5% of
    the run when the output is not a terminal, e.g. under nohup); a no-op on the other processes."""
    if not acc.is_main_process:
        yield lambda step, metrics: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn(), TimeRemainingColumn()]  # fmt: skip
    every = max(1, total // 20)
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(name, total=total, completed=done)

        def advance(step: int, m: dict[str, float]) -> None:
            shown = [f"{name} step {step + 1}/{total}"]
            for key, label in (("reward/total/mean", "reward"), ("sft/loss", "loss"), ("accuracy", "acc")):
                if key in m:
                    shown.append(f"{label} {m[key]:.3f}")
            bar.update(task, advance=1, description=" ".join(shown))
            if not bar.console.is_terminal and ((step + 1) % every == 0 or step + 1 == total):
                log.info("%s", " ".join(shown))

        yield advance
