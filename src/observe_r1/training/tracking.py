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
    def __init__(self, logging_cfg: Any, history: list[dict[str, Any]], config: dict):
        """`logging_cfg`: the config's LoggingConfig (output_dir, tensorboard, wandb and its settings)."""
        c, out = logging_cfg, Path(logging_cfg.output_dir)
        self.path = out / "metrics.jsonl"
        self.history = list(history)
        self.path.write_text("".join(json.dumps(m) + "\n" for m in self.history))  # drop steps to be redone
        self.tb = SummaryWriter(str(out / "tensorboard")) if c.tensorboard else None
        self.wandb = None
        if c.wandb:
            try:
                import wandb as wb  # optional
            except ImportError:
                log.warning("logging.wandb is on but wandb is not installed (pip install wandb); logging to "
                            "TensorBoard and jsonl only")  # fmt: skip
            else:
                self.wandb = wb.init(project=c.wandb_project, entity=c.wandb_entity or None, config=config,
                                     name=c.wandb_run_name or out.resolve().name, tags=list(c.wandb_tags) or None,
                                     dir=str(out), resume="allow")  # fmt: skip
                self._table = wb.Table

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

    def log_completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Sampled completions with their rewards: a TensorBoard text (a markdown table) and a wandb table."""
        if not rows:
            return
        columns = list(rows[0])
        if self.tb is not None:
            cell = lambda v: str(v).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
            lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
            lines += ["| " + " | ".join(cell(r[k]) for k in columns) + " |" for r in rows]
            self.tb.add_text("completions", "\n".join(lines), step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({"completions": self._table(columns=columns, data=[[r[k] for k in columns] for r in rows])},
                           step=step)  # fmt: skip

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN
    return v
