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

import errno
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

STEP_RE = re.compile(r"step-(\d+)$")
MANIFEST = "manifest.json"
STATE = "trainer_state"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, or one on disk is incomplete, corrupt or not finite."""


# ------------------------------------------------------------------ state as JSON + safetensors


def save_tree(obj: Any, stem: Path) -> None:
    """Write nested dicts / lists / tuples / numbers / strings / tensors / numpy arrays as STEM.json (the
    structure) and STEM.safetensors (the tensors). `load_tree` reads them back without unpickling."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = x.detach().cpu().contiguous().clone()
            return {"__tensor__": key}
        if isinstance(x, np.ndarray):
            return {"__ndarray__": enc(torch.from_numpy(x.astype(np.int64) if x.dtype == np.uint32 else x)),
                    "dtype": str(x.dtype)}  # fmt: skip
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v) for v in x]}
        if isinstance(x, list):
            return [enc(v) for v in x]
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: enc(v) for k, v in x.items()}
            return {"__items__": [[enc(k), enc(v)] for k, v in x.items()]}
        if x is None or isinstance(x, bool | int | float | str):
            return x
        raise TypeError(f"cannot store a {type(x).__name__} in a checkpoint")

    structure = enc(obj)
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps(structure))


def load_tree(stem: Path) -> Any:
    tensors = load_file(str(stem.with_suffix(".safetensors")))

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if not isinstance(x, dict):
            return x
        if "__tensor__" in x:
            return tensors[x["__tensor__"]]
        if "__ndarray__" in x:
            return dec(x["__ndarray__"]).numpy().astype(x["dtype"])
        if "__tuple__" in x:
            return tuple(dec(v) for v in x["__tuple__"])
        if "__items__" in x:
            return {_hashable(dec(k)): dec(v) for k, v in x["__items__"]}
        return {k: dec(v) for k, v in x.items()}

    return dec(json.loads(stem.with_suffix(".json").read_text()))


def _hashable(x: Any) -> Any:
    return tuple(x) if isinstance(x, list) else x


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
    its size and sha256."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"no readable {MANIFEST} ({e})"
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


# ------------------------------------------------------------------ RNG


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------ saving


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]


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
    if bad:
        raise CheckpointError(f"step {step}: not saving a checkpoint with non-finite weights ({len(bad)} "
                              f"tensors, first {bad[0]}); the checkpoints already saved are kept")  # fmt: skip
    try:
        if accelerator.is_main_process:
            restore_replaced(root)
            for stale in root.glob(".tmp-*"):
                shutil.rmtree(stale)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        save_tree(rng_state(), tmp / f"rng-rank{accelerator.process_index}")
        if accelerator.is_main_process:
            unwrapped.save_pretrained(tmp, safe_serialization=True)
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


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load checkpointed weights (full model or LoRA adapter) into an already built policy, in place, after
    checking they are finite. Full weights go through `from_pretrained`, which knows how transformers
    renames keys on save."""
    from observe_r1.models.policy import load_model

    try:
        if (path / "adapter_model.safetensors").is_file():
            from peft import set_peft_model_state_dict

            weights = load_file(path / "adapter_model.safetensors")
        else:
            weights = load_model(str(path)).state_dict()
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable weights ({type(e).__name__}: {e})") from e
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensors are not finite (first {bad[0]})")
    if (path / "adapter_model.safetensors").is_file():
        set_peft_model_state_dict(model, weights)
    else:
        model.load_state_dict(weights, strict=True)
