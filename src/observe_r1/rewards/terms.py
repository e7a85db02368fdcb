"""Reward terms: the built-in ones, plug-ins by reference, and one call of a term with per-response isolation.

This module imports no torch and nothing of observe_r1 beyond the config schema and rewards.accuracy / format /
signatures: the reward worker processes (observe_r1.rewards.compose) import it alone.

A reward function is any callable taking keyword arguments for the responses of one group (TRL's API, plus
the image and the group):

    fn(completions, completion_ids, completion_lengths, prompts, answers, group_ids, [images], **columns)
        -> list[float | None] | list[dict[str, float | None]]

`None` means "not applicable". A dict holds named sub-scores (each logged; their sum is the term's value, or
only the one named by `score_key`). Functions written for TRL, EasyR1 or verl run through their own
signature (`reward.terms[].signature`, observe_r1.rewards.signatures).
`images` (PIL images of each response's prompt) is passed only to functions that name it, so the pixels
are not sent to every worker for every term. Functions should accept `**kwargs` so new columns do not
break them.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import numbers
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from observe_r1.config import RewardTerm
from observe_r1.rewards.accuracy import grade
from observe_r1.rewards.format import BUILTIN_LAYOUTS, format_reward, layout_of
from observe_r1.rewards.signatures import SCORE_KEYS, adapt

RewardFn = Callable[..., list]
MAX_REWARD = 1e6  # the largest |value| a reward function may return (with weights <= 1e3: a finite sum)


class RewardFunctionError(TypeError):
    """A reward function returned something other than one finite float / None / dict per completion, or
    failed on every response of a step."""


@runtime_checkable
class CountingTerm(Protocol):
    """A term that reports counters with its values (summed over calls, logged as `reward/<counter>`)."""

    def score(self, **kwargs: Any) -> tuple[list, dict[str, int]]: ...


class Accuracy:
    """Batch form of `grade`; it counts the golds that fell back to text and the gradings that timed out."""

    def __init__(self, timeout_s: float = 5.0, fallback: bool = False):
        self.timeout_s, self.fallback = timeout_s, fallback

    def score(
        self, completions: list[str], answers: list[str], **_: Any
    ) -> tuple[list[float], dict[str, int]]:
        grades = [
            grade(c, a, self.timeout_s, self.fallback) for c, a in zip(completions, answers, strict=True)
        ]
        counts = {
            "unparsed_gold": sum(g.unparsed_gold for g in grades),
            "timeouts": sum(g.timed_out for g in grades),
        }
        return [g.score for g in grades], counts

    def __call__(self, completions: list[str], answers: list[str], **kwargs: Any) -> list[float]:
        return self.score(completions=completions, answers=answers, **kwargs)[0]


@dataclass(frozen=True)
class TermContext:
    """What building a term may need besides its config: the grading settings, callables given from Python
    (by term name) and the config's own format layouts (`reward.layouts`, by name)."""

    timeout_s: float = 5.0
    fallback: bool = False
    functions: dict[str, RewardFn] = field(default_factory=dict)
    layouts: dict[str, str] = field(default_factory=dict)


def _format_term(layout: str, spec: str | None = None) -> RewardFn:
    def fn(completions: list[str], **_: Any) -> list[float]:
        return [format_reward(c, layout, spec) for c in completions]

    layout_of(layout, spec)  # a bad layout fails when the term is built, not at the first step
    fn.__name__ = f"{layout}_format"
    return fn


class ToolUse:
    """`tool_use`: 1 for a response that called a tool and got a result (not an error), else 0.
    `tool_use_correct`: the same, only when the answer is right too (START's gate: a tool call pays only in a
    correct response, so the policy is not paid for calls that do not help). Multi-turn rollouts only: they
    read the `tool_calls` column."""

    def __init__(self, name: str, timeout_s: float = 5.0, fallback: bool = False):
        self.__name__, self.timeout_s, self.fallback = name, timeout_s, fallback

    def __call__(self, completions: list[str], answers: list[str], tool_calls: list | None = None,
                 **_: Any) -> list[float]:  # fmt: skip
        if tool_calls is None:
            raise ValueError(
                f"reward term {self.__name__} reads tool calls: it needs rollout.multi_turn.enabled"
            )
        used = [any(not c.get("error") for c in calls or []) for calls in tool_calls]
        if self.__name__ == "tool_use":
            return [float(u) for u in used]
        return [float(u and grade(c, a, self.timeout_s, self.fallback).score >= 1)
                for u, c, a in zip(used, completions, answers, strict=True)]  # fmt: skip


# the earlier names of two built-in layouts' terms
FORMAT_ALIASES = {"observe_format_nested": "observe_nested", "think_format_empty_ok": "think_empty_ok"}


def format_layout(name: str, layouts: dict[str, str]) -> str | None:
    """The layout a format term checks: `<layout>_format` for a built-in layout or one of `reward.layouts`."""
    if name in FORMAT_ALIASES:
        return FORMAT_ALIASES[name]
    layout = name.removesuffix("_format")
    return layout if name.endswith("_format") and (layout in BUILTIN_LAYOUTS or layout in layouts) else None


def builtin_term(name: str, ctx: TermContext) -> RewardFn | None:
    if name == "accuracy":
        return Accuracy(ctx.timeout_s, ctx.fallback)
    if name in ("tool_use", "tool_use_correct"):
        return ToolUse(name, ctx.timeout_s, ctx.fallback)
    layout = format_layout(name, ctx.layouts)
    return None if layout is None else _format_term(layout, ctx.layouts.get(layout))


BUILTINS = (
    "accuracy",
    "tool_use",
    "tool_use_correct",
    *(f"{layout}_format" for layout in BUILTIN_LAYOUTS),
    *FORMAT_ALIASES,
)


def load_function(ref: str, kind: str = "reward", builtins: tuple[str, ...] = BUILTINS) -> RewardFn:
    """`path/to/file.py:fn` or `package.module:fn` -> the callable, with an error that says what is wrong
    (`kind`: what it is for, in the messages: a reward or a tool)."""
    if ":" not in ref:
        raise ValueError(
            f"{kind} {ref!r}: not a built-in ({', '.join(builtins)}) nor `file.py:fn` / `module:fn`"
        )
    target, name = ref.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"{kind} {ref!r}: file {path} not found")
        module_name = f"observe_r1_{kind}_{path.stem}_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{kind} {ref!r}: {target} has no callable {name!r}")
    return fn


def make_term(term: RewardTerm, ctx: TermContext) -> RewardFn:
    """The callable of a term, with our native signature: a function given from Python by name, a built-in
    (accuracy, a `<layout>_format` check), or a reference; called through its signature's adapter."""
    fn = ctx.functions.get(term.name) or builtin_term(term.name, ctx) or load_function(term.name)
    return adapt(fn, term.signature)


def score_key(term: RewardTerm) -> str:
    """The key of a dict result that is the term's value ("" = the sum of the values)."""
    return term.score_key or SCORE_KEYS.get(term.signature, "")


def wants_images(fn: RewardFn) -> bool:
    if hasattr(fn, "wants_images"):  # an adapted peer function
        return bool(fn.wants_images)
    try:
        return "images" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a callable without a signature: give it everything
        return True


# ------------------------------------------------------------------ one call


@dataclass
class Call:
    """What one call of a term on some responses gave: a value per response, the responses that raised
    (index, "Type: message", traceback), and the term's counters."""

    values: list
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def call_term(fn: RewardFn, kwargs: dict[str, list]) -> Call:
    """Call `fn` on all responses at once; if it raises, response by response: those that still raise score
    0 and are reported. A wrong return (length, type, NaN) is a bug in the function: RewardFunctionError."""
    n = len(kwargs["completions"])
    try:
        values, counts = _scored(fn, kwargs)
        return Call(check_values(fn, values, n), counts=counts)
    except RewardFunctionError:
        raise
    except Exception:  # noqa: BLE001 - user code; find the response(s) that raise
        pass
    out = Call([])
    for i in range(n):
        try:
            values, counts = _scored(fn, {k: v[i : i + 1] for k, v in kwargs.items()})
            out.values += check_values(fn, values, 1)
            for key, count in counts.items():
                out.counts[key] = out.counts.get(key, 0) + count
        except RewardFunctionError:
            raise
        except Exception as e:  # noqa: BLE001
            out.values.append(0.0)
            out.errors.append((i, f"{type(e).__name__}: {e}", traceback.format_exc()))
    return out


def _scored(fn: RewardFn, kwargs: dict[str, list]) -> tuple[Any, dict[str, int]]:
    return fn.score(**kwargs) if isinstance(fn, CountingTerm) else (fn(**kwargs), {})


def check_values(fn: RewardFn, out: Any, n: int) -> list:
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
        if any(v is not None and not math.isfinite(v) for v in values):
            raise RewardFunctionError(
                f"reward function {name} returned {x!r}; return None (not NaN or inf) for 'not applicable'"
            )
        if any(v is not None and abs(v) > MAX_REWARD for v in values):
            raise RewardFunctionError(
                f"reward function {name} returned {x!r}; rewards must be within +-{MAX_REWARD:g} (larger ones "
                "overflow the weighted sum and the advantages): scale them down"
            )
    return list(out)


# ------------------------------------------------------------------ the worker side


_WORKER_TERMS: list[RewardFn] = []


def init_worker(terms: list[RewardTerm], ctx: TermContext, skipped: frozenset[int] = frozenset()) -> None:
    """Build the terms once per worker process (not those `skipped`: whole-batch terms, scored elsewhere)."""
    _WORKER_TERMS[:] = [_skipped if t in skipped else make_term(term, ctx) for t, term in enumerate(terms)]


def _skipped(**_: Any) -> list:
    raise RuntimeError("a whole-batch reward term is scored in the trainer process, not in a worker")


def whole_batch(fn: RewardFn) -> bool:
    """Whether a term scores all the responses of a step in one call in the trainer process, instead of group
    by group in the workers: a reward model or a judge (training.reward_models), which batch their work on
    a device or a server and bound their own time."""
    return bool(getattr(fn, "whole_batch", False))


def worker_call(term: int, kwargs: dict[str, list]) -> Call:
    return call_term(_WORKER_TERMS[term], kwargs)
