"""Arithmetic word problems: a verifiable text task for a small pretrained language model
(`observe-r1 demo --model smollm2`), with the gold answer by construction.

Each level adds a step or a bigger number, so a 135M-parameter instruct model solves the first levels
often and the last ones rarely: the range a GRPO signal lives in (mixed groups) and a ladder to climb.

  level 1  one step, one-digit numbers                "Ana has 3 apples and gets 4 more."
  level 2  one step, a two-digit total or a take-away  "Ana has 12 apples and gives 5 away."
  level 3  two steps, one-digit numbers                "... gets 4 more, then gives 2 away."
  level 4  one multiplication, one-digit factors       "Ana buys 3 bags of 4 apples."
  level 5  two steps, two-digit numbers
  level 6  a multiplication and a step

Rows are the framework's native text layout (`messages`, `answer`, `level`, `skill`, a worked `solution`);
splits never share a question."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

NAMES = ("Ana", "Ben", "Carla", "Dev", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena")
THINGS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "shells", "coins", "cards", "eggs")
LEVELS = (1, 2, 3, 4, 5, 6)


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int
    steps: tuple[str, ...]  # the worked solution, one equation per step
    level: int
    skill: str


def _gain(a: int, b: int) -> tuple[str, int, str]:
    return f"gets {b} more", a + b, f"{a} + {b} = {a + b}"


def _loss(a: int, b: int) -> tuple[str, int, str]:
    return f"gives {b} away", a - b, f"{a} - {b} = {a - b}"


def _one_step(rng: random.Random, low: int, high: int, take_away: bool) -> tuple[int, list]:
    a = rng.randint(low, high)
    if take_away:
        return a, [_loss(a, rng.randint(1, a - 1))]
    return a, [_gain(a, rng.randint(low, high))]


def _steps(rng: random.Random, start: int, count: int, high: int) -> list:
    """`count` gains or losses from `start`, never below one thing."""
    out, value = [], start
    for _ in range(count):
        op = _loss if value > 2 and rng.random() < 0.5 else _gain
        b = rng.randint(1, min(value - 1, high)) if op is _loss else rng.randint(1, high)
        out.append(op(value, b))
        value = out[-1][1]
    return out


def problem(rng: random.Random, level: int) -> Problem:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    if level == 1:
        start, ops = _one_step(rng, 1, 9, take_away=False)
    elif level == 2:
        start, ops = _one_step(rng, 10, 49, take_away=rng.random() < 0.5)
    elif level == 3:
        start = rng.randint(2, 9)
        ops = _steps(rng, start, 2, 9)
    elif level == 5:
        start = rng.randint(10, 49)
        ops = _steps(rng, start, 2, 49)
    elif level in (4, 6):
        bags, each = rng.randint(2, 9), rng.randint(2, 9)
        start = bags * each
        first = f"{name} buys {bags} bags of {each} {thing}."
        ops = [("", start, f"{bags} x {each} = {start}")] + (_steps(rng, start, 1, 9) if level == 6 else [])
        return _worded(first, name, thing, ops, level, "multiply" if level == 4 else "multiply_then_step")
    else:
        raise ValueError(f"unknown level {level}; levels are {LEVELS}")
    first = f"{name} has {start} {thing}."
    return _worded(first, name, thing, ops, level, "add" if level == 1 else f"{len(ops)}_steps")


def _worded(first: str, name: str, thing: str, ops: list, level: int, skill: str) -> Problem:
    actions = [text for text, _, _ in ops if text]
    story = first if not actions else f"{first[:-1]} and {', then '.join(actions)}."
    if first.startswith(f"{name} buys") and actions:
        story = f"{first} Then {name} {', then '.join(actions)}."
    question = f"{story} How many {thing} does {name} have now?"
    return Problem(question, ops[-1][1], tuple(eq for _, _, eq in ops), level, skill)


def generate(
    seed: int, split: str, count: int, levels=LEVELS, exclude: frozenset = frozenset()
) -> list[Problem]:
    """`count` problems, levels in turn, none whose question is in `exclude` or repeated."""
    rng = random.Random(f"arith/{seed}/{split}")
    out: list[Problem] = []
    seen = set(exclude)
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 20 * count + 1000:
            raise ValueError(f"cannot draw {count} distinct problems at levels {levels}")
        p = problem(rng, levels[len(out) % len(levels)])
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def row(sid: str, p: Problem) -> dict:
    return {
        "id": sid,
        "messages": [{"role": "user", "content": p.question}],
        "answer": str(p.answer),
        "solution": f"<think>{' '.join(p.steps)}</think><answer>{p.answer}</answer>",
        "level": p.level,
        "skill": p.skill,
    }


def write_dataset(
    out_dir: str | Path,
    train: int,
    test: int,
    seed: int = 0,
    levels=LEVELS,
    val: int = 0,
    progress: Callable[[], None] | None = None,
) -> dict[str, Path]:
    """DIR/train.jsonl, DIR/test.jsonl (and DIR/val.jsonl with `val`), sharing no question."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"test": generate(seed, "test", test, levels)}
    seen = frozenset(p.question for p in splits["test"])
    if val:
        splits["val"] = generate(seed, "val", val, levels, exclude=seen)
        seen |= {p.question for p in splits["val"]}
    splits["train"] = generate(seed, "train", train, levels, exclude=seen)
    paths = {}
    for split, problems in splits.items():
        paths[split] = out / f"{split}.jsonl"
        with paths[split].open("w") as f:
            for i, p in enumerate(problems):
                f.write(json.dumps(row(f"{split}-{i:06d}", p)) + "\n")
                if progress is not None:
                    progress()
    return paths
