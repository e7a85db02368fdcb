"""Checkpoints: the policy in HF format plus everything needed to continue exactly where the run stopped.

Layout: OUTPUT/checkpoints/step-000012/
  config.json, model.safetensors, tokenizer + image-processor files   (or adapter_* files for LoRA)
  trainer_state.pt   step, optimiser, scheduler, sampler position, metrics history, streaks
  rng-rank{r}.pt     python / numpy / torch (CPU and CUDA) RNG states of each process

A checkpoint is written into a `.tmp-*` directory and renamed when complete, so a run killed at any
moment leaves either the previous checkpoints or the new one, never a half-written one; stale `.tmp-*`
directories are removed by the next save. Only the newest `keep_last` checkpoints are kept.

With `checkpoint.best_metric`, OUTPUT/checkpoints/best is a complete checkpoint too, of the step whose
periodic evaluation was best so far, with `best.json` (metric, value, step); it is written the same atomic
way and never pruned.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STEP_RE = re.compile(r"step-(\d+)$")


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = [p for p in root.glob("step-*") if STEP_RE.search(p.name) and (p / "trainer_state.pt").is_file()]
    return sorted(found, key=lambda p: int(STEP_RE.search(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoint_dirs(output_dir)
    return found[-1] if found else None


def resolve_resume(resume: str, output_dir: str | Path) -> Path | None:
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / "trainer_state.pt").is_file():
        raise FileNotFoundError(f"checkpoint.resume={resume}: no trainer_state.pt there")
    return path


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    `notes` becomes a JSON file in it."""
    root = Path(output_dir) / "checkpoints"
    name = name or f"step-{step:06d}"
    final, tmp = root / name, root / f".tmp-{name}"
    if accelerator.is_main_process:
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
        encoder.save_pretrained(tmp)
        torch.save(trainer_state, tmp / "trainer_state.pt")
        for file, content in (notes or {}).items():
            (tmp / file).write_text(json.dumps(content, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoint_dirs(output_dir)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def best_record(output_dir: str | Path) -> dict[str, Any] | None:
    """OUTPUT/checkpoints/best/best.json (metric, value, step), or None when there is no best checkpoint."""
    path = Path(output_dir) / "checkpoints" / "best" / "best.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_trainer_state(path: Path, process_index: int) -> dict[str, Any]:
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    rng_file = path / f"rng-rank{process_index}.pt"
    if rng_file.is_file():
        state["rng"] = torch.load(rng_file, weights_only=False)
    return state


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load checkpointed weights (full model or LoRA adapter) into an already built policy, in place.
    Full weights go through `from_pretrained`, which knows how transformers renames keys on save."""
    from safetensors.torch import load_file

    if (path / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
        return
    from observe_r1.models.policy import load_model

    saved = load_model(str(path))
    model.load_state_dict(saved.state_dict(), strict=True)
