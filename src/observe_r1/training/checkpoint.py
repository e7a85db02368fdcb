"""Checkpoints: the policy in HF format plus everything needed to continue exactly where the run stopped.

Layout: OUTPUT/checkpoints/step-000012/
  config.json, model.safetensors, tokenizer + image-processor files   (or adapter_* files for LoRA)
  trainer_state.json + .safetensors   step, optimiser, scheduler, sampler position, metrics history, config
  rng-rank{r}.json + .safetensors     python / numpy / torch (CPU and CUDA) RNG states of each process
  manifest.json                       every file's size and sha256, written last

Nothing in a checkpoint is a pickle: state is JSON plus safetensors, so loading one never runs code (a
`trainer_state.pt` found in an output directory, from an older version or planted there, is never read).

A checkpoint is written into a `.tmp-*` directory and renamed when complete, so a run killed at any
moment leaves either the previous checkpoints or the new one, never a half-written one; stale `.tmp-*`
directories are removed by the next save. Before a checkpoint is trusted its manifest is checked (and its
weights must be finite); resuming falls back to the newest checkpoint that passes. Non-finite weights are
never saved, so pruning to the newest `keep_last` never drops the last good checkpoint.

With `checkpoint.best_metric`, OUTPUT/checkpoints/best is a complete checkpoint too, of the step whose
periodic evaluation was best so far, with `best.json` (metric, value, step); it is replaced atomically
(the old one is moved aside first and restored if the run dies before the new one is in place).
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from peft import set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file

from observe_r1.config import Config, ConfigError, to_dict
from observe_r1.models.policy import load_model, prepare_policy
from observe_r1.training import rundir, sharding
from observe_r1.training.state import load_tree, rng_state, save_tree, set_rng_state

log = logging.getLogger(__name__)

STEP_RE = re.compile(r"step-(\d+)$")
MANIFEST = "manifest.json"
STATE = "trainer_state"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, or one on disk is incomplete, corrupt or not finite."""


# ------------------------------------------------------------------ finding and checking checkpoints


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (their manifest, written last, is there), oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = [p for p in root.glob("step-*") if STEP_RE.search(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: int(STEP_RE.search(p.name).group(1)))  # type: ignore[union-attr]


def pickled_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders that hold a pickled trainer state (never loaded: unpickling can run code)."""
    root = Path(output_dir) / "checkpoints"
    return sorted(p.parent for p in root.glob("*/trainer_state.pt") if not (p.parent / MANIFEST).is_file())


def verify(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be trusted, or None: every file of its manifest is there, with
    its size and sha256, and no other file is (a file planted beside them, an `adapter_model.safetensors`
    say, would change what loading reads)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        unlisted = sorted(
            f.name for f in path.iterdir() if f.is_file() and f.name not in files and f.name != MANIFEST
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"no readable {MANIFEST} ({e})"
    if not isinstance(files, dict):
        return f"{MANIFEST} lists no files"
    if unlisted:
        return f"{', '.join(unlisted)} {'is' if len(unlisted) == 1 else 'are'} not in its manifest"
    for name, (size, digest) in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} is {f.stat().st_size} bytes, the manifest says {size}"
        if _sha256(f) != digest:
            return f"{name} does not match its checksum"
    return None


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def resume_candidates(resume: str, output_dir: str | Path) -> list[Path]:
    """Checkpoints to try, best first: `auto` = every complete one, newest first; a path = that one."""
    if resume == "none":
        return []
    if resume == "auto":
        for p in pickled_checkpoints(output_dir):
            log.warning("ignoring %s: it holds a pickled trainer_state.pt (an older observe-r1, or planted "
                        "there), which is never loaded because unpickling can run code", p)  # fmt: skip
        return checkpoint_dirs(output_dir)[::-1]
    path = Path(resume)
    if not (path / MANIFEST).is_file():
        pickled = (
            " (its trainer_state.pt is a pickle, never loaded)"
            if (path / "trainer_state.pt").exists()
            else ""
        )
        raise FileNotFoundError(f"checkpoint.resume={resume}: no complete checkpoint there{pickled}")
    return [path]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoint_dirs(output_dir)
    return found[-1] if found else None


# ------------------------------------------------------------------ saving


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not torch.isfinite(sharding.local(p)).all()]


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    encoder: Any,
    trainer_state: dict[str, Any],
    keep_last: int,
    accelerator: Any,
    name: str = "",
    notes: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint `step` atomically (all processes call this; rank 0 writes the shared files). With
    `name`, it goes to OUTPUT/checkpoints/NAME (replacing one there, never pruned), and each entry of
    `notes` becomes a JSON file in it. Refuses non-finite weights; a failed write is one clear error."""
    root = Path(output_dir) / "checkpoints"
    name = name or f"step-{step:06d}"
    final, tmp = root / name, root / f".tmp-{name}"
    unwrapped = accelerator.unwrap_model(model)
    bad = nonfinite_parameters(unwrapped)
    if sharding.total(len(bad), accelerator.device):  # FSDP: each process checks its shards
        raise CheckpointError(f"step {step}: not saving a checkpoint with non-finite weights (first "
                              f"{bad[0] if bad else 'on another process'}); the checkpoints already saved are "
                              "kept")  # fmt: skip
    weights = sharding.full_state_dict(unwrapped) if sharding.is_sharded(unwrapped) else None
    try:
        if accelerator.is_main_process:
            restore_replaced(root)
            for stale in root.glob(".tmp-*"):
                shutil.rmtree(stale)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        save_tree(rng_state(), tmp / f"rng-rank{accelerator.process_index}")
        if accelerator.is_main_process:
            unwrapped.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
            encoder.save_pretrained(tmp)
            save_tree(trainer_state, tmp / STATE)
            for file, content in (notes or {}).items():
                (tmp / file).write_text(json.dumps(content, indent=2))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            files = {f.name: [f.stat().st_size, _sha256(f)] for f in sorted(tmp.iterdir()) if f.is_file()}
            (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
            replace(tmp, final)
            for old in checkpoint_dirs(output_dir)[:-keep_last]:
                shutil.rmtree(old)
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"cannot write checkpoint {final}: {_cause(e)}") from e
    accelerator.wait_for_everyone()
    return final


def _cause(e: Exception) -> str:
    code = getattr(e, "errno", None)
    if code is None:  # safetensors wraps the OS error in its message
        text = str(e)
        code = errno.ENOSPC if "StorageFull" in text or "No space" in text else None
        code = errno.EROFS if "ReadOnlyFilesystem" in text or "Read-only" in text else code
    if code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
        filename = getattr(e, "filename", None)
        where = f" ({filename})" if filename else ""
        return f"{errno.errorcode[code]}: {os.strerror(code)}{where}"
    return f"{type(e).__name__}: {e}"


def replace(tmp: Path, final: Path) -> None:
    """Put `tmp` in place of `final`; the old `final` is moved aside first and removed last, so a kill at any
    point leaves one of the two in place or aside (`restore_replaced` puts it back)."""
    aside = final.with_name(f".old-{final.name}")
    if final.exists():
        if aside.exists():
            shutil.rmtree(aside)
        final.rename(aside)
    tmp.rename(final)
    if aside.exists():
        shutil.rmtree(aside)


def restore_replaced(root: Path) -> None:
    """A run killed between the two renames of `replace` left no `final`: put the old one back."""
    for aside in root.glob(".old-*"):
        final = aside.with_name(aside.name.removeprefix(".old-"))
        if final.exists():
            shutil.rmtree(aside)
        else:
            aside.rename(final)
            log.warning("restored %s (a run stopped while replacing it)", final)


# ------------------------------------------------------------------ loading


def best_record(
    output_dir: str | Path, metric: str = "", mode: str = "max", history: list[dict] | None = None
) -> dict | None:
    """OUTPUT/checkpoints/best/best.json (metric, value, step), or None when there is no best checkpoint.
    A best.json that is not such a record is reported; the best so far is then recomputed from the logged
    evaluations of `metric` in `history`, or dropped when there are none (the next evaluation starts anew)."""
    root = Path(output_dir) / "checkpoints"
    restore_replaced(root)
    path = root / "best" / "best.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        ok = (isinstance(record, dict) and isinstance(record.get("metric"), str)
              and isinstance(record.get("value"), int | float) and math.isfinite(record["value"])
              and isinstance(record.get("step"), int))  # fmt: skip
    except ValueError:
        ok = False
    if ok:
        return record
    logged = [(r[metric], r["step"] + 1) for r in history or [] if isinstance(r.get(metric), int | float)]
    if not metric or not logged:
        log.warning("%s is not a {metric, value, step} record; the best checkpoint is dropped", path)
        return None
    value, step = max(logged) if mode == "max" else min(logged)
    log.warning("%s is not a {metric, value, step} record; best %s so far recomputed from the metrics "
                "history: %.4g at step %d", path, metric, value, step)  # fmt: skip
    return {"metric": metric, "value": value, "step": step}


def load_trainer_state(path: Path, process_index: int) -> dict[str, Any]:
    try:
        state = load_tree(path / STATE)
        rng = path / f"rng-rank{process_index}.json"
        if rng.is_file():
            state["rng"] = load_tree(rng.with_suffix(""))
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable trainer state ({type(e).__name__}: {e})") from e
    return state


def load_weights(model: torch.nn.Module, path: Path, trust_remote_code: bool = False) -> None:
    """Load checkpointed weights (full model or LoRA adapter) into an already built policy, in place, after
    checking they are finite. Full weights go through `from_pretrained`, which knows how transformers
    renames keys on save."""
    adapter = (path / "adapter_model.safetensors").is_file()
    try:
        weights = (
            load_file(path / "adapter_model.safetensors")
            if adapter
            else load_model(str(path), trust_remote_code=trust_remote_code).state_dict()
        )
    except Exception as e:  # noqa: BLE001 - whatever transformers or safetensors raise for a bad file
        raise CheckpointError(f"{path}: unreadable weights ({type(e).__name__}: {e})") from e
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensors are not finite (first {bad[0]})")
    try:
        if adapter:
            set_peft_model_state_dict(model, weights)
        else:
            sharding.load_full_state_dict(model, weights)
    except (AttributeError, KeyError, RuntimeError, ValueError) as e:  # weights of another model
        raise CheckpointError(f"{path}: its weights do not fit this model ({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------ the run's checkpointer


@dataclass
class RunState:
    step: int = 0  # the next rollout/training step to run
    history: list[dict] = dataclasses.field(default_factory=list)
    nonfinite_streak: int = 0
    best: float | None = None  # the best value of checkpoint.best_metric so far (its step: best.json)
    zero_weight_streak: int = 0  # rollout steps in a row where f(d) was 0 for every group
    # async rollouts: the requests queued for later steps (prompts drawn, not trained): a resume regenerates them
    pending: list[dict] = dataclasses.field(default_factory=list)


# Config keys that may differ between a checkpoint and the run resuming it: they change what is logged or
# saved, or how long the run is, not the training itself. Every other difference needs allow_config_change.
MAY_CHANGE = ("logging.", "checkpoint.", "ladder.", "data.test", "rollout.chunk_size", "model.attn_implementation",
              "model.packing", "model.gradient_checkpointing", "optim.max_steps", "optim.epochs", "optim.max_nonfinite_steps")  # fmt: skip


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
        self.saved_step = -1  # the step of the last checkpoint this run wrote

    def resume(self) -> RunState:
        """The newest checkpoint that passes its checks (`checkpoint.resume=auto`; older ones are tried in
        turn, saying why), the one named, or a fresh start in an output directory without a previous run."""
        c, out = self.cfg.checkpoint, Path(self.cfg.logging.output_dir)
        tried = []
        for path in resume_candidates(c.resume, out):
            try:
                problem = verify(path)
                if problem is None:
                    return self._load(path)
            except CheckpointError as e:
                problem = str(e)
            if c.resume != "auto":
                raise CheckpointError(f"checkpoint.resume={c.resume}: cannot be trusted: {problem}")
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
        if (out / "metrics.jsonl").exists() and "metrics.jsonl" not in rundir.owned_outputs(out):
            raise ConfigError(
                f"checkpoint.overwrite: {out / 'metrics.jsonl'} was not written by observe-r1 (its run "
                f"record {rundir.RECORD} does not list it), so it is not deleted; move it away, or "
                "choose another logging.output_dir"
            )
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            log.warning("checkpoint.overwrite: clearing the previous run in %s", out)
            kept = rundir.clear_previous_run(out, lambda p: (p / MANIFEST).is_file())
            if kept:
                log.warning(
                    "checkpoint.overwrite: kept %s in %s: observe-r1 did not make them", ", ".join(kept), out
                )
        self.acc.wait_for_everyone()

    def _load(self, path: Path) -> RunState:
        state = load_trainer_state(path, self.acc.process_index)
        now = to_dict(self.cfg)
        saved = _moved(state.get("config", {}), state.get("config", {}).get("logging", {}).get("output_dir"),
                       now["logging"]["output_dir"])  # fmt: skip
        changes = config_changes(saved, now)
        if changes and not self.cfg.checkpoint.allow_config_change:
            raise ConfigError(f"the config differs from the one checkpoint {path} was trained with:\n  "
                              + "\n  ".join(changes) + "\nresume with the same config, or pass "
                              "checkpoint.allow_config_change=true to continue with the new values")  # fmt: skip
        load_weights(self.acc.unwrap_model(self.model), path, self.cfg.model.trust_remote_code)
        sharding.load_optimizer_state(self.acc.unwrap_model(self.model), self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        if changes:
            self._apply_optimiser_settings()
            log.warning("resuming %s with a changed config (checkpoint.allow_config_change):\n  %s", path,
                        "\n  ".join(changes))  # fmt: skip
        if "rng" in state:
            set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", path, state["step"])
        run = RunState(
            state["step"],
            state["history"],
            state.get("nonfinite_streak", 0),
            zero_weight_streak=state.get("zero_weight_streak", 0),
            pending=state.get("pending", []),
        )
        c = self.cfg.checkpoint
        best = best_record(self.cfg.logging.output_dir, c.best_metric, c.best_mode, run.history)
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
            "pending": run.pending,
            "optimizer": sharding.optimizer_state(self.acc.unwrap_model(self.model), self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "config": to_dict(self.cfg),
        }
        c = self.cfg.checkpoint
        if not name:
            self.saved_step = run.step
        return save_checkpoint(self.cfg.logging.output_dir, run.step, self.model, self.encoder, state,
                                    c.keep_last, self.acc, name, notes)  # fmt: skip

    def export_merged(self) -> Path | None:
        """With LoRA and `checkpoint.merge_lora`: the merged full model in OUTPUT/merged."""
        if not (self.cfg.model.lora_rank and self.cfg.checkpoint.merge_lora):
            return None
        model = self.acc.unwrap_model(self.model)
        if sharding.is_sharded(model):  # every process joins the gather; a whole copy merges on the main one
            weights = sharding.full_state_dict(model)
            if not self.acc.is_main_process:
                return None
            base = load_model(self.cfg.model.path, trust_remote_code=self.cfg.model.trust_remote_code)
            model = prepare_policy(base, self.cfg.model)
            model.load_state_dict(weights, strict=False)  # tied weights come once
        elif not self.acc.is_main_process:
            return None
        else:
            model = copy.deepcopy(model)
        merged = model.merge_and_unload()
        out = Path(self.cfg.logging.output_dir) / "merged"
        merged.save_pretrained(out)
        self.encoder.save_pretrained(out)
        return out
