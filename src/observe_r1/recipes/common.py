"""What every training recipe (GRPO, SFT) shares: the run directory and its inputs, the accelerator,
the policy and optimiser, resuming, checkpointing and the non-finite-step guard."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import broadcast_object_list
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

from observe_r1.algos import loss_denominator
from observe_r1.config import Config, ConfigError, dump_config, to_dict
from observe_r1.data.dataset import Sample, load_samples
from observe_r1.data.prompts import system_prompt, with_system_prompt
from observe_r1.models.inputs import ChatEncoder, EncodedPrompt, PromptError
from observe_r1.models.policy import load_model, prepare_policy
from observe_r1.recipes import checkpoint as ckpt
from observe_r1.recipes.tracking import Tracker

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator() -> Accelerator:
    ddp = DistributedDataParallelKwargs(find_unused_parameters=False)
    return Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])


def prepare_model(acc: Accelerator, model: torch.nn.Module, optimizer, samples: list[Sample]):
    """DDP-wrap the model. A text-only prompt leaves the vision tower without gradients, which DDP must be
    told about (it costs an extra graph traversal, so only then)."""
    if acc.ddp_handler is not None:
        acc.ddp_handler.find_unused_parameters = any(not s.images for s in samples)
    return acc.prepare(model, optimizer)


def prepare_inputs(cfg: Config, accelerator: Accelerator) -> Config:
    """Build what the config leaves out, into the output dir: a tiny model when `model.path` is "", and
    synthetic data when `data.train` is empty. Returns the config with those paths filled in."""
    out = Path(cfg.logging.output_dir)
    model_path, train, test = cfg.model.path, cfg.data.train, cfg.data.test
    if not model_path:
        model_path = str(out / "base-model")
    if not train:
        train, test = [str(out / "data" / "train.jsonl")], [str(out / "data" / "test.jsonl")]
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not (Path(model_path) / "config.json").is_file() and not cfg.model.path:
            from observe_r1.models import tiny

            build_atomically(Path(model_path), lambda tmp: tiny.build_tiny_vlm(tmp, size=cfg.model.tiny_size,
                                                                               seed=cfg.seed))  # fmt: skip
        if not cfg.data.train and not Path(train[0]).is_file():
            from observe_r1.data import synth

            build_atomically(out / "data", lambda tmp: synth.write_dataset(tmp, cfg.data.synth_train,
                                                                           cfg.data.synth_test, seed=cfg.seed))  # fmt: skip
    accelerator.wait_for_everyone()
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, path=model_path),
        data=dataclasses.replace(cfg.data, train=train, test=test),
    )
    if accelerator.is_main_process:
        dump_config(cfg, out / "config.yaml")
    return cfg


def build_atomically(final: Path, build: Any) -> None:
    """`build(path)` into a temporary folder renamed to `final` when complete: a run killed while building
    leaves no partial model or dataset for the next run to pick up."""
    tmp = final.with_name(f".tmp-{final.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    build(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def load_encoder(cfg: Config) -> ChatEncoder:
    encoder = ChatEncoder.from_pretrained(
        cfg.model.path,
        max_prompt_length=cfg.data.max_prompt_length,
        min_pixels=cfg.data.min_pixels,
        max_pixels=cfg.data.max_pixels,
    )
    encoder.system_prompt = cfg.data.system_prompt  # recorded in every checkpoint (observe_r1.json)
    return encoder


def load_data(cfg: Config, encoder: ChatEncoder) -> tuple[list[Sample], list[Sample]]:
    system = system_prompt(cfg.data.system_prompt)
    train = load_samples(cfg.data.train, encoder, system, cfg.data.max_bad_row_fraction)
    test = (
        load_samples(cfg.data.test, encoder, system, cfg.data.max_bad_row_fraction) if cfg.data.test else []
    )
    if cfg.checkpoint.best_metric and not test:
        raise ConfigError("checkpoint.best_metric needs data.test: the evaluation split it is measured on")
    return train, test


def encode_prompts(
    samples: list[Sample], encoder: ChatEncoder, system: str
) -> tuple[list[EncodedPrompt], list, int]:
    """Encode each sample's prompt. One that fails now (an image deleted since validation, say) is replaced
    by the previous good prompt of the batch and counted, so batch shapes and processes stay in step."""
    prompts: list[EncodedPrompt | None] = []
    images, bad = [], 0
    for s in samples:
        try:
            imgs = s.load_images()
            prompts.append(encoder.encode(with_system_prompt(s.messages, system), imgs, s.id))
            images.append(imgs)
        except (OSError, PromptError) as e:
            log.warning("prompt %s skipped at training time: %s", s.id, e)
            prompts.append(None)
            images.append([])
            bad += 1
    good = [i for i, p in enumerate(prompts) if p is not None]
    if not good:
        raise RuntimeError(f"every prompt of this batch failed to encode: {[s.id for s in samples]}")
    for i, p in enumerate(prompts):
        if p is None:
            j = max([g for g in good if g < i], default=good[0])
            prompts[i], images[i], samples[i] = prompts[j], images[j], samples[j]
    return prompts, images, bad  # type: ignore[return-value]


def build_policy(cfg: Config) -> torch.nn.Module:
    return prepare_policy(load_model(cfg.model.path, cfg.model.attn_implementation), cfg.model)


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


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16 compute on GPU by default (weights stay fp32); fp32 on CPU."""
    low = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if dtype == "auto" and device.type == "cuda":
        low = torch.bfloat16
    return torch.autocast(device.type, dtype=low) if low is not None else contextlib.nullcontext()


def reference_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    """`model.reference_dtype`; auto: bf16 when the policy computes in bf16 (GPU), else fp32."""
    if cfg.model.reference_dtype != "auto":
        return getattr(torch, cfg.model.reference_dtype)
    bf16 = cfg.model.dtype == "bfloat16" or (cfg.model.dtype == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else torch.float32


@dataclass
class RunState:
    step: int = 0  # the next rollout/training step to run
    history: list[dict] = dataclasses.field(default_factory=list)
    nonfinite_streak: int = 0
    best: float | None = None  # the best value of checkpoint.best_metric so far (its step: best.json)
    zero_weight_streak: int = 0  # rollout steps in a row where f(d) was 0 for every group


# Config keys that may differ between a checkpoint and the run resuming it: they change what is logged or
# saved, or how long the run is, not the training itself. Every other difference needs allow_config_change.
MAY_CHANGE = ("logging.", "checkpoint.", "ladder.", "data.test", "rollout.chunk_size", "model.attn_implementation",
              "model.gradient_checkpointing", "optim.max_steps", "optim.epochs", "optim.max_nonfinite_steps")  # fmt: skip


def config_changes(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """`key: saved -> now` for every leaf that differs, except the keys in MAY_CHANGE."""
    out = []
    for key in sorted(set(saved) | set(now)):
        name = f"{prefix}{key}"
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{name}.")
        elif _plain_value(a) != _plain_value(b) and not name.startswith(MAY_CHANGE):
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def _moved(x: Any, old: str | None, new: str) -> Any:
    """`x` with paths inside the output directory `old` moved to `new` (a copied or renamed run directory:
    the tiny model and data built into it)."""
    if isinstance(x, dict):
        return {k: _moved(v, old, new) for k, v in x.items()}
    if isinstance(x, list):
        return [_moved(v, old, new) for v in x]
    if old and isinstance(x, str) and (x == old or x.startswith(old.rstrip("/") + "/")):
        return new + x[len(old) :]
    return x


def _plain_value(x: Any) -> Any:
    return list(x) if isinstance(x, tuple) else x


class Checkpointer:
    """Resume at start-up, save every `checkpoint.every` steps and at the end, and keep the best."""

    def __init__(self, cfg: Config, accelerator: Accelerator, model, optimizer, scheduler, sampler, encoder):
        self.cfg, self.acc = cfg, accelerator
        self.model, self.optimizer, self.scheduler, self.sampler, self.encoder = (
            model,
            optimizer,
            scheduler,
            sampler,
            encoder,
        )

    def resume(self) -> RunState:
        """The newest checkpoint that passes its checks (`checkpoint.resume=auto`; older ones are tried in
        turn, saying why), the one named, or a fresh start in an output directory without a previous run."""
        c, out = self.cfg.checkpoint, Path(self.cfg.logging.output_dir)
        tried = []
        for path in ckpt.resume_candidates(c.resume, out):
            try:
                problem = ckpt.verify(path)
                if problem is None:
                    return self._load(path)
            except ckpt.CheckpointError as e:
                problem = str(e)
            if c.resume != "auto":
                raise ckpt.CheckpointError(f"checkpoint.resume={c.resume}: cannot be trusted: {problem}")
            log.warning("checkpoint %s cannot be trusted (%s); trying the one before it", path, problem)
            tried.append(path.name)
        self._start_fresh(out, tried)
        return RunState()

    def _start_fresh(self, out: Path, tried: list[str]) -> None:
        """Refuse to start over a previous run's checkpoints and metrics unless `checkpoint.overwrite`."""
        previous = [p for p in (out / "checkpoints", out / "metrics.jsonl") if p.exists() and
                    (p.is_file() and p.stat().st_size or p.is_dir() and any(p.iterdir()))]  # fmt: skip
        if not previous:
            return
        if not self.cfg.checkpoint.overwrite:
            why = (f"none of its checkpoints can be trusted ({', '.join(tried)})" if tried else
                   "no checkpoint to resume from" if self.cfg.checkpoint.resume == "auto" else
                   "checkpoint.resume=none")  # fmt: skip
            raise ConfigError(
                f"{out} holds a previous run ({', '.join(p.name for p in previous)}) and {why}: pass "
                "checkpoint.overwrite=true (with checkpoint.resume=none) to clear it and start afresh, or choose "
                "another logging.output_dir"
            )
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            log.warning("checkpoint.overwrite: clearing the previous run in %s", out)
            for p in (out / "checkpoints", out / "metrics.jsonl", out / "rollouts", out / "tensorboard"):
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        self.acc.wait_for_everyone()

    def _load(self, path: Path) -> RunState:
        state = ckpt.load_trainer_state(path, self.acc.process_index)
        now = to_dict(self.cfg)
        saved = _moved(state.get("config", {}), state.get("config", {}).get("logging", {}).get("output_dir"),
                       now["logging"]["output_dir"])  # fmt: skip
        changes = config_changes(saved, now)
        if changes and not self.cfg.checkpoint.allow_config_change:
            raise ConfigError(f"the config differs from the one checkpoint {path} was trained with:\n  "
                              + "\n  ".join(changes) + "\nresume with the same config, or pass "
                              "checkpoint.allow_config_change=true to continue with the new values")  # fmt: skip
        ckpt.load_weights(self.acc.unwrap_model(self.model), path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        if changes:
            self._apply_optimiser_settings()
            log.warning("resuming %s with a changed config (checkpoint.allow_config_change):\n  %s", path,
                        "\n  ".join(changes))  # fmt: skip
        if "rng" in state:
            ckpt.set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", path, state["step"])
        run = RunState(state["step"], state["history"], state.get("nonfinite_streak", 0),
                       zero_weight_streak=state.get("zero_weight_streak", 0))  # fmt: skip
        c = self.cfg.checkpoint
        best = ckpt.best_record(self.cfg.logging.output_dir, c.best_metric, c.best_mode, run.history)
        if best is not None and best["metric"] == c.best_metric:
            run.best = best["value"]
        return run

    def _apply_optimiser_settings(self) -> None:
        """The loaded optimiser and scheduler state carry the checkpoint's lr, betas and weight decay:
        put the config's in their place (the schedule continues from the same step with the new lr)."""
        o = self.cfg.optim
        for group in self.optimizer.param_groups:
            group.update(betas=o.betas, weight_decay=o.weight_decay, initial_lr=o.lr)
        self.scheduler.base_lrs = [o.lr] * len(self.optimizer.param_groups)
        lrs = [
            o.lr * f(self.scheduler.last_epoch) for f in self.scheduler.lr_lambdas
        ]  # transformers' LambdaLR
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self.scheduler._last_lr = list(lrs)

    def keep_best(self, run: RunState, metrics: dict[str, float]) -> None:
        """After an evaluation (`metrics`): with `checkpoint.best_metric`, save this step as
        OUTPUT/checkpoints/best when it beats the best so far."""
        c = self.cfg.checkpoint
        if not c.best_metric:
            return
        # only the main process evaluated; all must decide alike (saving is collective)
        value, logged = broadcast_object_list([metrics.get(c.best_metric), sorted(metrics)])
        if value is None:
            raise ConfigError(
                f"checkpoint.best_metric: the evaluation logs no {c.best_metric!r}; it logs {', '.join(logged)}"
            )
        better = run.best is None or (value > run.best if c.best_mode == "max" else value < run.best)
        if math.isnan(value) or not better:
            return
        run.best = value
        record = {"metric": c.best_metric, "value": value, "step": run.step}
        path = self.save(run, name="best", notes={"best.json": record})
        log.info("best %s so far: %.4g at step %d -> %s", c.best_metric, value, run.step, path)

    def save(self, run: RunState, name: str = "", notes: dict[str, Any] | None = None) -> Path:
        state = {
            "step": run.step,
            "history": run.history,
            "nonfinite_streak": run.nonfinite_streak,
            "zero_weight_streak": run.zero_weight_streak,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "config": to_dict(self.cfg),
        }
        c = self.cfg.checkpoint
        return ckpt.save_checkpoint(self.cfg.logging.output_dir, run.step, self.model, self.encoder, state,
                                    c.keep_last, self.acc, name, notes)  # fmt: skip

    def export_merged(self) -> Path | None:
        """With LoRA and `checkpoint.merge_lora`: the merged full model in OUTPUT/merged."""
        if not (self.cfg.model.lora_rank and self.cfg.checkpoint.merge_lora and self.acc.is_main_process):
            return None
        import copy

        merged = copy.deepcopy(self.acc.unwrap_model(self.model)).merge_and_unload()
        out = Path(self.cfg.logging.output_dir) / "merged"
        merged.save_pretrained(out)
        self.encoder.save_pretrained(out)
        return out


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
        last = ckpt.latest_checkpoint(cfg.logging.output_dir)
        raise RuntimeError(
            f"{run.nonfinite_streak} optimiser steps in a row had a non-finite loss or gradient; stopped at step "
            f"{run.step} (last checkpoint: {last or 'none'}). Lower optim.lr or check the data and rewards."
        )
    return float(grad_norm)


def evaluate_on_main(cfg: Config, acc: Accelerator, model, encoder: ChatEncoder, test: list[Sample], system: str,
                     batch_size: int) -> dict[str, float]:  # fmt: skip
    """Greedy evaluation on the test split on the main process (the others wait), as `eval/*` metrics."""
    from observe_r1.recipes.evaluate import evaluate
    from observe_r1.rewards import Rewarder
    from observe_r1.rollout.hf import HFRollout

    metrics: dict[str, float] = {}
    if acc.is_main_process:
        backend = HFRollout(acc.unwrap_model(model), encoder)
        with autocast(acc.device, cfg.model.dtype), Rewarder.from_config(cfg.reward) as rewarder:
            result, _ = evaluate(
                backend, encoder, test, rewarder, system, cfg.rollout.max_new_tokens, batch_size
            )
        metrics = {f"eval/{k}": v for k, v in result.items()}
    acc.wait_for_everyone()
    return metrics


def make_tracker(cfg: Config, run: RunState, accelerator: Accelerator) -> Tracker | None:
    if not accelerator.is_main_process:
        return None
    return Tracker(
        cfg.logging.output_dir, run.history, cfg.logging.tensorboard, cfg.logging.wandb, to_dict(cfg)
    )


def mean_across_processes(metrics: dict[str, float], accelerator: Accelerator) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}


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
