"""Metrics: one JSON line per step (metrics.jsonl), TensorBoard, wandb when installed and enabled, and a
stage timer. The metrics history is also kept in the checkpoint, so a resumed run rewrites metrics.jsonl
without the steps it is about to redo."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger(__name__)


class StageTimer:
    """`with timer("rollout"): ...` records seconds per stage as `time/<stage>`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"time/{stage}"] = (
                self.seconds.get(f"time/{stage}", 0.0) + time.perf_counter() - start
            )

    def pop(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


class Tracker:
    def __init__(
        self,
        output_dir: str | Path,
        history: list[dict[str, Any]],
        tensorboard: bool,
        wandb: bool,
        config: dict,
    ):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.history = list(history)
        self.path.write_text("".join(json.dumps(m) + "\n" for m in self.history))  # drop steps to be redone
        self.tb = None
        if tensorboard:
            self.tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))
        self.wandb = None
        if wandb:
            try:
                import wandb as wb  # optional

                self.wandb = wb.init(project="observe-r1", config=config, dir=str(output_dir), resume="allow")
            except ImportError:
                log.warning(
                    "logging.wandb is on but wandb is not installed; logging to TensorBoard and jsonl only"
                )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in sorted(metrics.items())}}
        self.history.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN
    return v
