"""Reward functions written for other frameworks, called through their own signatures.

`reward.terms[].signature` picks the adapter; each turns our call (the native keyword arguments of one
group: completions, completion_ids, completion_lengths, prompts, answers, group_ids, [images], columns)
into the peer's, and the peer's result back into one value per response:

  native  fn(completions, completion_ids, completion_lengths, prompts, answers, group_ids, [images], **columns)
          -> list[float | None | dict]                          (ours; TRL's API plus the image and the group)
  trl     fn(prompts, completions, completion_ids, **columns) -> list[float | None]
          TRL's `reward_funcs`: conversational completions `[[{"role": "assistant", "content": ...}]]`, prompts
          as chat lists, every dataset column under its own name (`solution`, `answer`, ...).
  easyr1  compute_score(reward_inputs: list[dict]) -> list[dict]   (REWARD_TYPE = "batch", EasyR1's default)
          compute_score(reward_input: dict) -> dict               (the module sets REWARD_TYPE = "sequential")
          each input `{"response", "response_length", "ground_truth", **columns}`; the score is `overall`,
          the other keys are logged only.
  verl    compute_score(data_source, solution_str, ground_truth, extra_info) -> float | dict, per response;
          a dict's score is `score`, its other numeric keys are logged only (strings such as `pred` dropped).

This module imports nothing of observe_r1: the reward worker processes build the adapted terms themselves.
"""

from __future__ import annotations

import inspect
import numbers
import sys
from collections.abc import Callable
from typing import Any

RewardFn = Callable[..., list]

NATIVE = ("completions", "completion_ids", "completion_lengths", "prompts", "answers", "group_ids", "images")
SCORE_KEYS = {"easyr1": "overall", "verl": "score"}  # the score among a dict's keys, by signature


def adapt(fn: RewardFn, signature: str) -> RewardFn:
    """`fn` callable with our native keyword arguments."""
    if signature == "native":
        return fn
    adapter = {"trl": _trl, "easyr1": _easyr1, "verl": _verl}.get(signature)
    if adapter is None:
        raise ValueError(f"reward signature {signature!r}: one of native, trl, easyr1, verl")
    wrapped = adapter(fn)
    wrapped.__name__ = getattr(fn, "__name__", type(fn).__name__)
    wrapped.wants_images = signature == "trl" and takes(fn, "images")  # type: ignore[attr-defined]
    return wrapped


def takes(fn: Callable, name: str) -> bool:
    """Whether `fn` accepts a keyword argument `name` (by name or through **kwargs); unknown: yes."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _columns(kwargs: dict[str, list]) -> dict[str, list]:
    """The dataset's own columns among a native call's keyword arguments."""
    return {k: v for k, v in kwargs.items() if k not in NATIVE}


def _trl(fn: RewardFn) -> RewardFn:
    def call(**kw: list) -> list:
        columns = _columns(kw)
        columns.setdefault("answer", kw["answers"])  # the gold column's usual name in TRL recipes
        if "images" in kw:
            columns["images"] = kw["images"]
        return fn(
            prompts=kw["prompts"],
            completions=[[{"role": "assistant", "content": c}] for c in kw["completions"]],
            completion_ids=kw["completion_ids"],
            trainer_state=None,
            **columns,
        )

    return call


def _easyr1(fn: RewardFn) -> RewardFn:
    sequential = (
        getattr(sys.modules.get(getattr(fn, "__module__", "")), "REWARD_TYPE", "batch") == "sequential"
    )

    def call(**kw: list) -> list:
        columns = _columns(kw)
        inputs = [
            {"response": c, "response_length": n, "ground_truth": a, **{k: v[i] for k, v in columns.items()}}
            for i, (c, n, a) in enumerate(
                zip(kw["completions"], kw["completion_lengths"], kw["answers"], strict=True)
            )
        ]
        out = [fn(x) for x in inputs] if sequential else fn(inputs)
        return [_numeric(x) for x in out] if isinstance(out, list | tuple) else out

    return call


def _verl(fn: RewardFn) -> RewardFn:
    with_extra = takes(fn, "extra_info")

    def call(**kw: list) -> list:
        n = len(kw["completions"])
        sources, extras = kw.get("data_source", [""] * n), kw.get("extra_info", [None] * n)
        out = []
        for i in range(n):
            args: dict[str, Any] = dict(data_source=sources[i], solution_str=kw["completions"][i],
                                        ground_truth=kw["answers"][i])  # fmt: skip
            if with_extra:
                args["extra_info"] = extras[i]
            out.append(_numeric(fn(**args)))
        return out

    return call


def _numeric(x: Any) -> Any:
    """A peer's result with bools as floats and a dict's non-numeric entries (verl's `pred`) dropped."""
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, dict):
        return {k: float(v) for k, v in x.items() if isinstance(v, numbers.Real)}
    return x
