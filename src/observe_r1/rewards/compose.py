"""Reward terms combined with weights, with plug-ins and per-sample isolation.

A reward function is any callable taking keyword arguments for a whole batch of completions (TRL's API,
plus the image and the group):

    fn(completions, completion_ids, completion_lengths, prompts, images, answers, group_ids, **columns)
        -> list[float | None] | list[dict[str, float | None]]

`None` means "not applicable": it is left out of that term's mean and adds nothing to the total. A dict
holds named sub-scores: each is logged, and their sum is the term's value. Functions should accept
`**kwargs` so that new columns do not break them.

Isolation: if a function raises, it is called again sample by sample; samples that still raise score 0
for that term, the traceback is logged once per distinct error and counted in `reward/errors`, and
training goes on. A function that returns the wrong length or type is a bug in the function: it fails
at once with a message naming it (`RewardFunctionError`).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import numbers
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from observe_r1.rewards.accuracy import grade
from observe_r1.rewards.format import format_reward

log = logging.getLogger(__name__)

RewardFn = Callable[..., list]


class RewardFunctionError(TypeError):
    """A reward function returned something other than one float / None / dict per completion."""


@dataclass
class RewardBatch:
    """Everything a reward function may look at, one entry per completion."""

    completions: list[str]
    completion_ids: list[list[int]]
    completion_lengths: list[int]
    prompts: list[list[dict]]
    images: list[list[Any]]  # PIL images of each completion's prompt
    answers: list[str]
    group_ids: list[Any]
    columns: dict[str, list[Any]] = field(default_factory=dict)  # every other dataset column

    def __len__(self) -> int:
        return len(self.completions)

    def kwargs(self) -> dict[str, list[Any]]:
        fixed = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "columns"}
        return {**self.columns, **fixed}


@dataclass
class RewardResult:
    total: torch.Tensor  # [B] weighted sum of the terms
    terms: dict[str, torch.Tensor]  # [B] raw value per term; NaN where the function returned None
    correct: torch.Tensor  # [B] bool: the correctness term is 1
    metrics: dict[str, float]


# ------------------------------------------------------------------ built-in terms


class Accuracy:
    """Batch form of `grade`; also reports how many golds fell back to text and how many timed out."""

    def __init__(self, timeout_s: float = 5.0, fallback: bool = False):
        self.timeout_s, self.fallback = timeout_s, fallback
        self.last_metrics: dict[str, float] = {}

    def __call__(self, completions: list[str], answers: list[str], **_: Any) -> list[float]:
        grades = [
            grade(c, a, self.timeout_s, self.fallback) for c, a in zip(completions, answers, strict=True)
        ]
        n = max(len(grades), 1)
        self.last_metrics = {
            "reward/unparsed_gold": sum(g.unparsed_gold for g in grades) / n,
            "reward/timeouts": float(sum(g.timed_out for g in grades)),
        }
        return [g.score for g in grades]


def _format_term(layout: str) -> RewardFn:
    def fn(completions: list[str], **_: Any) -> list[float]:
        return [format_reward(c, layout) for c in completions]

    fn.__name__ = f"{layout}_format"
    return fn


BUILTINS: dict[str, Callable[..., RewardFn]] = {
    "accuracy": lambda timeout_s, fallback: Accuracy(timeout_s, fallback),
    "observe_format": lambda **_: _format_term("observe"),
    "observe_format_nested": lambda **_: _format_term("observe_nested"),
    "think_format": lambda **_: _format_term("think"),
    "think_format_empty_ok": lambda **_: _format_term("think_empty_ok"),
}


def load_function(ref: str) -> RewardFn:
    """`path/to/file.py:fn` or `package.module:fn` -> the callable, with an error that says what is wrong."""
    if ":" not in ref:
        raise ValueError(
            f"reward {ref!r}: not a built-in ({', '.join(BUILTINS)}) nor `file.py:fn` / `module:fn`"
        )
    target, name = ref.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"reward {ref!r}: file {path} not found")
        module_name = f"observe_r1_reward_{path.stem}_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"reward {ref!r}: {target} has no callable {name!r}")
    return fn


def term_name(ref: str) -> str:
    return ref.rsplit(":", 1)[-1] if ":" in ref else ref


# ------------------------------------------------------------------ combination


class Rewarder:
    """Scores a RewardBatch with weighted terms; `correct_term` names the term whose 1s mean "correct"."""

    def __init__(
        self,
        terms: list[tuple[str, float]],
        correct_term: str = "accuracy",
        timeout_s: float = 5.0,
        answer_fallback: bool = False,
    ):
        self.terms: list[tuple[str, float, RewardFn]] = []
        for ref, weight in terms:
            name = term_name(ref)
            if any(name == n for n, _, _ in self.terms):
                raise ValueError(f"reward term {name!r} appears twice")
            maker = BUILTINS.get(ref)
            fn = maker(timeout_s=timeout_s, fallback=answer_fallback) if maker else load_function(ref)
            self.terms.append((name, weight, fn))
        if correct_term not in [n for n, _, _ in self.terms]:
            raise ValueError(f"reward.correct_term {correct_term!r} is not one of the reward terms")
        self.correct_term = correct_term
        self._seen_errors: set[tuple[str, str]] = set()

    @classmethod
    def from_config(cls, cfg: Any) -> Rewarder:
        """From a `RewardConfig`."""
        return cls(
            [(t.name, t.weight) for t in cfg.terms], cfg.correct_term, cfg.timeout_s, cfg.answer_fallback
        )

    def __call__(self, batch: RewardBatch) -> RewardResult:
        total = torch.zeros(len(batch))
        values: dict[str, torch.Tensor] = {}
        metrics: dict[str, float] = {}
        errors = 0
        for name, weight, fn in self.terms:
            raw, n_errors = self._call(name, fn, batch)
            errors += n_errors
            value = torch.tensor([_term_value(x) for x in raw], dtype=torch.float32)
            values[name] = value
            total += weight * torch.nan_to_num(value, nan=0.0)
            metrics.update(term_metrics(name, raw, value))
            metrics.update(getattr(fn, "last_metrics", {}))
        metrics["reward/total/mean"] = float(total.mean()) if len(batch) else 0.0
        metrics["reward/errors"] = float(errors)
        correct = values[self.correct_term] >= 1.0 - 1e-6  # NaN compares False
        return RewardResult(total, values, correct, metrics)

    def _call(self, name: str, fn: RewardFn, batch: RewardBatch) -> tuple[list, int]:
        kwargs = batch.kwargs()
        try:
            return _checked(fn, fn(**kwargs), len(batch)), 0
        except RewardFunctionError:
            raise
        except Exception:  # noqa: BLE001 - user code; find the sample(s) that raise
            pass
        out, errors = [], 0
        for i in range(len(batch)):
            try:
                out += _checked(fn, fn(**{k: v[i : i + 1] for k, v in kwargs.items()}), 1)
            except RewardFunctionError:
                raise
            except Exception as e:  # noqa: BLE001
                errors += 1
                out.append(0.0)
                key = (name, f"{type(e).__name__}: {e}")
                if key not in self._seen_errors:
                    self._seen_errors.add(key)
                    log.warning(
                        "reward %s raised on a sample (scored 0; logged once):\n%s",
                        name,
                        traceback.format_exc(),
                    )
        return out, errors


def _checked(fn: RewardFn, out: Any, n: int) -> list:
    name = getattr(fn, "__name__", type(fn).__name__)
    if not isinstance(out, list | tuple) or len(out) != n:
        got = f"{type(out).__name__} of length {len(out)}" if hasattr(out, "__len__") else type(out).__name__
        raise RewardFunctionError(f"reward function {name} must return a list of {n} values, got {got}")
    for x in out:
        values = x.values() if isinstance(x, dict) else [x]
        if not all(v is None or isinstance(v, numbers.Real) for v in values):
            raise RewardFunctionError(
                f"reward function {name} returned {x!r}; each value must be a float, None, or a dict of floats"
            )
    return list(out)


def _term_value(x: Any) -> float:
    if isinstance(x, dict):
        parts = [float(v) for v in x.values() if v is not None]
        return sum(parts) if parts else math.nan
    return math.nan if x is None else float(x)


def term_metrics(name: str, raw: list, value: torch.Tensor) -> dict[str, float]:
    present = value[~value.isnan()]
    metrics = {
        f"reward/{name}/mean": float(present.mean()) if len(present) else math.nan,
        f"reward/{name}/rate_1": float((present == 1).float().mean()) if len(present) else math.nan,
    }
    for key in sorted({k for x in raw if isinstance(x, dict) for k in x}):
        sub = [float(x[key]) for x in raw if isinstance(x, dict) and x.get(key) is not None]
        metrics[f"reward/{name}/{key}/mean"] = sum(sub) / len(sub) if sub else math.nan
    return metrics


def merge_results(parts: list[tuple[RewardResult, list[int]]]) -> RewardResult:
    """The chosen rows of several RewardResults as one (dynamic sampling keeps groups from several tries).
    Term means are recomputed over the kept rows; error and timeout counts add up over all tries."""

    def cat(get) -> torch.Tensor:
        return torch.cat([get(r)[rows] for r, rows in parts])

    first = parts[0][0]
    terms = {name: cat(lambda r, name=name: r.terms[name]) for name in first.terms}
    total = cat(lambda r: r.total)
    metrics = dict(first.metrics)
    for name, value in terms.items():
        metrics.update(term_metrics(name, [], value))
    for key in ("reward/errors", "reward/timeouts"):
        metrics[key] = sum(r.metrics.get(key, 0.0) for r, _ in parts)
    metrics["reward/total/mean"] = float(total.mean()) if len(total) else 0.0
    return RewardResult(total, terms, cat(lambda r: r.correct), metrics)
