"""Reward terms combined with weights, scored group by group in worker processes with a time bound.

Each term (observe_r1.rewards.terms) is called once per group (the n responses of one prompt), in
`reward.workers` worker processes (0: in this process, unbounded: for debugging); a whole-batch term (a
reward model, a judge: `terms.whole_batch`) once per step on all its responses, in this process. A call on a group of n
responses may take n x `reward.timeout_s` seconds; past that its worker is killed and the responses are
tried one by one, each bounded by `timeout_s`; a response that still takes longer scores 0 for that term
and is counted in `reward/timeouts`. The bound holds whichever thread asks for the rewards (math-verify's own
SIGALRM limit works only in a main thread; the workers run it in theirs).

Isolation: a response on which a function raises scores 0 for that term; the traceback is logged once per
distinct error and counted in `reward/errors`. A term that raises, or times out, on every response of a
step stops the run with the first traceback and the term's name: a function written for another
framework's signature would otherwise train on zeros. A function that returns the wrong length or type, or
NaN, fails at once with a message naming it (`RewardFunctionError`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import os
import pickle
import weakref
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import torch
from pebble import ProcessExpired, ProcessPool

from observe_r1.config import MAX_TERM_WEIGHT, RewardTerm
from observe_r1.rewards.terms import (
    BUILTINS,
    Call,
    RewardFn,
    RewardFunctionError,
    TermContext,
    call_term,
    format_layout,
    init_worker,
    make_term,
    score_key,
    wants_images,
    whole_batch,
    worker_call,
)

log = logging.getLogger(__name__)

MAX_REBUILDS = 3  # times the worker pool may break and be rebuilt while scoring one batch of calls


class RewardTimeoutError(RuntimeError):
    """A reward term took longer than its time bound on every response of a step."""


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

    def kwargs(self, rows: list[int], images: bool = True) -> dict[str, list[Any]]:
        """The keyword arguments of a call on these rows (`images` only if asked for)."""
        fixed = [k for k in self.__dataclass_fields__ if k != "columns" and (images or k != "images")]
        return {
            k: [v[i] for i in rows]
            for k, v in [*self.columns.items(), *((k, getattr(self, k)) for k in fixed)]
        }

    def groups(self) -> list[list[int]]:
        """Rows of each run of equal group ids (a GRPO group: the n responses of one prompt)."""
        runs: list[list[int]] = []
        for i, g in enumerate(self.group_ids):
            if runs and self.group_ids[runs[-1][0]] == g:
                runs[-1].append(i)
            else:
                runs.append([i])
        return runs


@dataclass
class RewardResult:
    total: torch.Tensor  # [B] weighted sum of the terms
    terms: dict[str, torch.Tensor]  # [B] raw value per term; NaN where the function returned None
    correct: torch.Tensor  # [B] bool: the correctness term reaches its threshold
    metrics: dict[str, float]


@dataclass
class TermOutcome:
    """One term over a whole batch."""

    raw: list  # a value (float, None or dict) per row
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (row, message, traceback)
    timed_out: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


class Rewarder:
    """Scores a RewardBatch with weighted terms; a response is correct when `correct_term` >= `correct_threshold`."""

    def __init__(
        self,
        terms: Sequence[RewardTerm | tuple[str, float]],
        correct_term: str = "accuracy",
        timeout_s: float = 5.0,
        answer_fallback: bool = False,
        workers: int = 2,
        correct_threshold: float = 1.0,
        functions: dict[str, RewardFn] | None = None,
        layouts: dict[str, str] | None = None,
        gate: str = "",
    ):
        """`terms`: RewardTerm (or (name, weight)); `functions`: callables given from Python, by term name;
        `layouts`: format layouts by name (`<name>_format` terms); `gate`: a term that gates the others."""
        self.terms = [t if isinstance(t, RewardTerm) else RewardTerm(*t) for t in terms]
        for t in self.terms:
            if not (isinstance(t.weight, int | float) and abs(t.weight) <= MAX_TERM_WEIGHT):
                raise ValueError(
                    f"reward term {t.name}: weight {t.weight!r} must be a number within +-{MAX_TERM_WEIGHT:g}"
                )
        self.functions = dict(functions or {})
        self.ctx = TermContext(timeout_s, answer_fallback, self.functions, dict(layouts or {}))
        self.refs = [t.name for t in self.terms]
        self.names = [t.key for t in self.terms]
        self.weights = [t.weight for t in self.terms]
        self.score_keys = [score_key(t) for t in self.terms]
        duplicate = next((n for i, n in enumerate(self.names) if n in self.names[:i]), None)
        if duplicate:
            raise ValueError(f"reward term {duplicate!r} appears twice")
        # built here too, so a bad reference fails before anything runs, and for workers=0
        self.fns = [make_term(t, self.ctx) for t in self.terms]
        self.send_images = [wants_images(fn) for fn in self.fns]
        self.batched = frozenset(t for t, fn in enumerate(self.fns) if whole_batch(fn))
        if correct_term not in self.names:
            raise ValueError(f"reward.correct_term {correct_term!r} is not one of the reward terms")
        self.correct_term, self.correct_threshold = correct_term, correct_threshold
        if gate and gate not in self.names:
            raise ValueError(f"reward.gate {gate!r} is not one of the reward terms")
        self.gate = gate
        stuck = [name for name, fn in self.functions.items() if not whole_batch(fn) and not importable(fn)]
        # workers that fork this process: they inherit functions a forkserver's workers could not import
        self.forked = bool(workers and stuck)
        if self.forked:
            log.info(
                "reward functions %s are defined in __main__ (a notebook or script), or are lambdas or "
                "closures: the reward workers are forks of this process, which inherit them",
                stuck,
            )
        if not workers and any(t.name not in BUILTINS for t in self.terms):
            log.warning(
                "reward.workers=0: rewards are scored in this process, and reward functions other than "
                "the built-in terms run without a time bound (for debugging; the default is 2 workers)"
            )
        if workers > (os.cpu_count() or 1) * 4:
            log.warning("reward.workers=%d is more than 4 per CPU core (%d cores)", workers, os.cpu_count())
        self.timeout_s, self.workers = timeout_s, workers
        self._pool: ProcessPool | None = None
        self.rebuilds = 0  # times the worker pool broke and was rebuilt (logged as reward/pool_rebuilds)
        self._seen_errors: set[tuple[str, str]] = set()

    @classmethod
    def from_config(cls, cfg: Any, functions: dict[str, RewardFn] | None = None) -> Rewarder:
        """From a `RewardConfig` (and callables given from Python, by term name)."""
        return cls(cfg.terms, cfg.correct_term, cfg.timeout_s, cfg.answer_fallback, cfg.workers,
                   cfg.correct_threshold, functions, cfg.layouts, cfg.gate)  # fmt: skip

    @property
    def format_term(self) -> str | None:
        """The first format term (its 1s give `format_rate`), or None."""
        return next((name for name, ref in zip(self.names, self.refs, strict=True)
                     if format_layout(ref, self.ctx.layouts) is not None), None)  # fmt: skip

    def __enter__(self) -> Rewarder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool.join()
            self._pool = None

    def __call__(self, batch: RewardBatch) -> RewardResult:
        rebuilds = self.rebuilds
        outcomes = self._score(batch)
        total = torch.zeros(len(batch))
        values: dict[str, torch.Tensor] = {}
        metrics: dict[str, float] = {}
        counts: dict[str, int] = {}
        for name, weight, key, out in zip(self.names, self.weights, self.score_keys, outcomes, strict=True):
            self._check(name, out, len(batch))
            value = torch.tensor([_term_value(x, name, key) for x in out.raw], dtype=torch.float32)
            values[name] = value
            if name != self.gate:
                total += weight * torch.nan_to_num(value, nan=0.0)
            metrics.update(term_metrics(name, out.raw, value))
            for key, n in [
                *out.counts.items(),
                ("errors", len(out.errors)),
                ("timeouts", len(out.timed_out)),
            ]:
                counts[key] = counts.get(key, 0) + n
        if self.gate:  # Plantain / Vision-R1: the other terms count only where the gate term is 1
            total = torch.where(values[self.gate] >= 1, total, torch.zeros_like(total))
        n = max(len(batch), 1)
        metrics["reward/total/mean"] = float(total.mean()) if len(batch) else 0.0
        metrics["reward/errors"] = float(counts["errors"])
        metrics["reward/timeouts"] = float(
            counts["timeouts"]
        )  # calls past their bound + gradings past theirs
        metrics["reward/pool_rebuilds"] = float(self.rebuilds - rebuilds)
        if "unparsed_gold" in counts:
            metrics["reward/unparsed_gold"] = counts["unparsed_gold"] / n
        for key, count in counts.items():  # a term's own counters (a judge's failures, ...)
            if key not in ("errors", "timeouts", "unparsed_gold"):
                metrics[f"reward/{key}"] = float(count)
        correct = values[self.correct_term] >= self.correct_threshold  # NaN compares False
        return RewardResult(total, values, correct, metrics)

    def _check(self, name: str, out: TermOutcome, n: int) -> None:
        """Log each distinct error once; stop when a term failed or timed out on every response."""
        for _, message, trace in out.errors:
            if (name, message) not in self._seen_errors:
                self._seen_errors.add((name, message))
                log.warning("reward %s raised on a response (scored 0; logged once):\n%s", name, trace)
        if n and len(out.errors) == n:
            raise RewardFunctionError(
                f"reward term {name} raised on every one of the {n} responses of this step (written for another "
                f"signature? see docs/rewards.md); the first error:\n{out.errors[0][2]}"
            )
        if n and len(out.timed_out) == n:
            raise RewardTimeoutError(
                f"reward term {name} took longer than reward.timeout_s={self.timeout_s} s on every one of the {n} "
                "responses of this step: it hangs, or needs a larger reward.timeout_s"
            )

    # ------------------------------------------------------------ calls

    def _score(self, batch: RewardBatch) -> list[TermOutcome]:
        everything = [list(range(len(batch)))]  # a whole-batch term's one "group"
        groups = {t: everything if t in self.batched else batch.groups() for t in range(len(self.refs))}
        calls = {
            (t, g): batch.kwargs(rows, self.send_images[t])
            for t in groups
            for g, rows in enumerate(groups[t])
        }
        here = {key: kw for key, kw in calls.items() if self.workers == 0 or key[0] in self.batched}
        done = {key: call_term(self.fns[key[0]], kwargs) for key, kwargs in here.items()}
        timed_out: dict[tuple[int, int], list[int]] = {}
        if len(here) < len(calls):
            got, timed_out = self._in_workers({key: kw for key, kw in calls.items() if key not in here})
            done |= got
        outcomes = []
        for t in range(len(self.refs)):
            out = TermOutcome([None] * len(batch))
            for g, rows in enumerate(groups[t]):
                call = done[(t, g)]
                for i, v in zip(rows, call.values, strict=True):
                    out.raw[i] = v
                out.errors += [(rows[i], m, tb) for i, m, tb in call.errors]
                out.timed_out += [rows[i] for i in timed_out.get((t, g), [])]
                for key, n in call.counts.items():
                    out.counts[key] = out.counts.get(key, 0) + n
            outcomes.append(out)
        return outcomes

    def _in_workers(self, calls: dict) -> tuple[dict, dict]:
        """Run the calls in the worker pool; a call past its bound is retried response by response, and a
        response whose worker died (killed from outside, by an OOM killer, or by the function) once more."""
        first = self._run(
            {key: (key[0], kw, self.timeout_s * len(kw["completions"])) for key, kw in calls.items()}
        )
        done = {key: got for key, got in first.items() if isinstance(got, Call)}
        retry = [key for key in calls if key not in done]
        singles = {(key, i): (key[0], {k: v[i : i + 1] for k, v in calls[key].items()}, self.timeout_s)
                   for key in retry for i in range(len(calls[key]["completions"]))}  # fmt: skip
        got = self._run(singles)
        got |= self._run({k: singles[k] for k, one in got.items() if isinstance(one, ProcessExpired)})
        timed_out: dict[tuple[int, int], list[int]] = {}
        for key in retry:
            call = Call([])
            for i in range(len(calls[key]["completions"])):
                one = got[(key, i)]
                if isinstance(one, Call):
                    call.values += one.values
                    call.errors += [(i, m, tb) for _, m, tb in one.errors]
                    for name, n in one.counts.items():
                        call.counts[name] = call.counts.get(name, 0) + n
                elif isinstance(one, FutureTimeout):
                    call.values.append(0.0)
                    timed_out.setdefault(key, []).append(i)
                else:  # the worker died twice on this response (the function kills it: os._exit, a crash)
                    call.values.append(0.0)
                    call.errors.append((i, f"worker process died: {one}", f"worker process died: {one}"))
            done[key] = call
        return done, timed_out

    def _run(self, calls: dict[Any, tuple[int, dict, float]]) -> dict[Any, Any]:
        """Each call (term, kwargs, time bound) scheduled on the pool: its Call, or the FutureTimeout /
        ProcessExpired that ended it. A pool that breaks (a worker killed while idle breaks pebble's pool) is
        rebuilt and the calls not done yet run again, at most MAX_REBUILDS times per batch of calls."""
        out: dict[Any, Any] = {}
        for _ in range(MAX_REBUILDS + 1):
            try:
                pool = self._get_pool()
                futures = {
                    key: pool.schedule(worker_call, (term, kw), timeout=bound)
                    for key, (term, kw, bound) in calls.items()
                    if key not in out
                }
                for key, future in futures.items():
                    try:
                        out[key] = future.result()
                    except (FutureTimeout, ProcessExpired) as e:
                        out[key] = e
                return out
            except RuntimeError as e:  # pebble: BrokenProcessPool, "Unexpected error within the Pool"
                log.warning(
                    "the reward worker pool broke (%s: %s; a worker killed from outside?): rebuilt, %d "
                    "call(s) scored again",
                    type(e).__name__,
                    e,
                    len(calls) - len(out),
                )
                self.close()
                self.rebuilds += 1
        raise RuntimeError(
            f"the reward worker pool broke {MAX_REBUILDS + 1} times while scoring one batch; "
            "something kills its workers (memory? see the system log), or they cannot start: a script that "
            'trains or evaluates at its top level, without `if __name__ == "__main__":`, is run again by '
            "every worker that starts (Python's multiprocessing imports the main script)"
        )

    def _get_pool(self) -> ProcessPool:
        if self._pool is None:
            # forkserver: workers fork from a clean server process (not from a process holding a model and
            # threads), so a worker killed for a timeout is replaced in milliseconds. Functions that a worker
            # cannot import (defined in __main__, lambdas, closures) are inherited instead: a fork of this
            # process, where they exist (such a function must not use CUDA, which does not survive a fork).
            context: Any
            if self.forked:
                context = multiprocessing.get_context("fork")
            else:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(["observe_r1.rewards.terms"])
            # whole-batch terms are neither built nor sent there (a reward model would be loaded in each)
            ctx = dataclasses.replace(
                self.ctx, functions={k: f for k, f in self.functions.items() if not whole_batch(f)}
            )
            args = (self.terms, ctx, self.batched)
            self._pool = ProcessPool(self.workers, initializer=init_worker, context=context, initargs=args)
            weakref.finalize(self, self._pool.stop)
        return self._pool


def _term_value(x: Any, name: str, key: str) -> float:
    """A response's value of a term: the float, NaN for None, a dict's `key` entry or the sum of its values."""
    if not isinstance(x, dict):
        return math.nan if x is None else float(x)
    if key:
        if key not in x:
            raise RewardFunctionError(
                f"reward term {name} returned a dict without its score key {key!r} (keys: {sorted(x)}); set "
                "reward.terms[].score_key to the key that is the score"
            )
        return math.nan if x[key] is None else float(x[key])
    parts = [float(v) for v in x.values() if v is not None]
    return sum(parts) if parts else math.nan


def importable(fn: Any) -> bool:
    """Whether a worker process can import `fn` by reference (not a lambda, not defined in __main__)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module in (None, "__main__") or "<" in qualname:  # <lambda>, <locals>
        return False
    try:
        pickle.dumps(fn)
    except Exception:  # noqa: BLE001 - anything pickle refuses
        return False
    return True


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
    for key in ("reward/errors", "reward/timeouts", "reward/pool_rebuilds"):
        metrics[key] = sum(r.metrics.get(key, 0.0) for r, _ in parts)
    metrics["reward/total/mean"] = float(total.mean()) if len(total) else 0.0
    return RewardResult(total, terms, cat(lambda r: r.correct), metrics)
