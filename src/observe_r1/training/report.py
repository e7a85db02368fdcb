"""OUTPUT/report.md and OUTPUT/training.png at the end of every `train` and `sft` run (and the demo's curves):
the training curves, the first / last / best value of the headline metrics, the final evaluation, where
the checkpoints are. Reads only the metrics history; imports nothing of observe_r1."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

# (metric, title, companions drawn on the same axes as (metric, label))
Panel = tuple[str, str, tuple[tuple[str, str], ...]]
GRPO_PANELS: tuple[Panel, ...] = (
    ("reward/total/mean", "reward (mean)", ()),
    ("accuracy", "accuracy (rollouts)", (("eval/accuracy", "evaluation"),)),
    ("format_rate", "format rate (rollouts)", (("eval/format_rate", "evaluation"),)),
    ("response/length_mean", "response length (tokens)", (("response/length_correct_mean", "correct only"),)),
)
SFT_PANELS: tuple[Panel, ...] = (
    ("sft/loss", "SFT loss (per token)", ()),
    ("eval/accuracy", "accuracy (evaluation)", ()),
    ("eval/format_rate", "format rate (evaluation)", ()),
    ("optim/lr", "learning rate", ()),
)


def training_plot(rows: Sequence[dict[str, Any]], panels: Sequence[Panel], path: Path, xlabel: str) -> None:
    """One panel per metric against the step; a panel whose metric was never logged stays empty."""
    fig = Figure(figsize=(4.5 * len(panels), 3.6))
    for ax, (key, title, companions) in zip(fig.subplots(1, len(panels)), panels, strict=True):
        for metric, label in ((key, None), *companions):
            points = [(r["step"], r[metric]) for r in rows if _finite(r.get(metric))]
            if points:
                ax.plot(
                    *zip(*points, strict=True), marker="o" if metric.startswith("eval/") else ".", label=label
                )
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        ax.set(title=title, xlabel=xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_report(out: Path, title: str, history: Sequence[dict[str, Any]], panels: Sequence[Panel],
                 checkpoints: Sequence[str]) -> Path:  # fmt: skip
    """OUTPUT/report.md with OUTPUT/training.png; returns the report's path."""
    training_plot(history, panels, out / "training.png", "step")
    keys = [k for key, _, companions in panels for k in (key, *(c for c, _ in companions))]
    lines = [f"| {key} | {_fmt(_first(history, key))} | {_fmt(_last(history, key))} | {_fmt(_best(history, key))} |"
             for key in dict.fromkeys(keys) if any(_finite(r.get(key)) for r in history)]  # fmt: skip
    final: dict[str, Any] = next((r for r in reversed(history) if any(k.startswith("eval/") for k in r)), {})
    evaluation = [f"| {k} | {_fmt(v)} |" for k, v in sorted(final.items()) if k.startswith("eval/")]
    steps = max((r["step"] for r in history), default=-1) + 1
    text = [f"# {title}", "", f"{steps} steps; metrics per step in `metrics.jsonl` (and TensorBoard), the resolved "
            "config in `config.yaml`.", "", "![training](training.png)", "",
            "| metric | first | last | best |", "| --- | --- | --- | --- |", *lines, ""]  # fmt: skip
    if evaluation:
        text += [
            f"## Evaluation at step {final['step']}",
            "",
            "| metric | value |",
            "| --- | --- |",
            *evaluation,
            "",
        ]
    text += ["## Checkpoints", "", *(f"- `{c}`" for c in checkpoints), ""]
    path = out / "report.md"
    path.write_text("\n".join(text))
    return path


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _values(history: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in history if _finite(r.get(key))]


def _first(history: Sequence[dict[str, Any]], key: str) -> float | None:
    return next(iter(_values(history, key)), None)


def _last(history: Sequence[dict[str, Any]], key: str) -> float | None:
    values = _values(history, key)
    return values[-1] if values else None


def _best(history: Sequence[dict[str, Any]], key: str) -> float | None:
    values = _values(history, key)
    if not values:
        return None
    if "loss" in key:
        return min(values)
    return max(values) if any(word in key for word in ("accuracy", "format_rate", "reward")) else None


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"
