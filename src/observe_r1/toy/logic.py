"""Knights and Knaves: a second synthetic domain, text only ("Warm Up Before You Train": distil reasoning on
logic puzzles, then RL on a few examples of the visual task). Knights always tell the truth, knaves always lie;
each person makes one statement about the others; every puzzle has exactly one solution (checked by brute
force). The difficulty is the number of people (2 to 5: `level`).

A row is a native one (`messages`, `answer`, `solution`, `level`, `skill`): the gold is the assignment in a
fixed order, `Alice: knight, Bob: knave`, and the reference response reasons over the candidate assignments
in `<think>` before the `<answer>`.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path

NAMES = ("Alice", "Bob", "Carol", "Dave", "Eve")
LEVELS = (2, 3, 4, 5)  # people per puzzle

Statement = tuple[str, Callable[[dict[str, bool]], bool]]  # (text, truth given who is a knight)


def _statements(speaker: str, others: list[str], rng: random.Random) -> Statement:
    a = rng.choice(others)
    b = rng.choice([o for o in others if o != a] or [a])
    kind = rng.randrange(-2, 5 if b != a else 2)
    if kind == -2:  # statements about the speaker too: two-person puzzles need them
        return f"{a} and I are both knaves", lambda w: not w[a] and not w[speaker]
    if kind == -1:
        return f"I am a knave or {a} is a knight", lambda w: not w[speaker] or w[a]
    if kind == 0:
        return f"{a} is a knight", lambda w: w[a]
    if kind == 1:
        return f"{a} is a knave", lambda w: not w[a]
    if kind == 2:
        return f"{a} and {b} are both knights", lambda w: w[a] and w[b]
    if kind == 3:
        return f"{a} is a knight or {b} is a knave", lambda w: w[a] or not w[b]
    return f"{a} and {b} are of the same kind", lambda w: w[a] == w[b]


def puzzle(
    people: int, rng: random.Random
) -> tuple[list[str], list[tuple[str, str]], dict[str, bool], list[str]]:
    """(names, [(speaker, statement text)], the unique solution, the reasoning lines)."""
    names = list(NAMES[:people])
    while True:
        said = {p: _statements(p, [o for o in names if o != p], rng) for p in names}
        worlds = [
            dict(zip(names, values, strict=True))
            for values in itertools.product([True, False], repeat=people)
        ]
        consistent = [w for w in worlds if all(w[p] == truth(w) for p, (_, truth) in said.items())]
        if len(consistent) == 1:
            break
    lines = []
    for w in worlds:
        wrong = next((p for p, (_, truth) in said.items() if w[p] != truth(w)), None)
        guess = ", ".join(f"{p} {'knight' if w[p] else 'knave'}" for p in names)
        lines.append(
            f"If {guess}: " + (f"{wrong}'s statement contradicts this." if wrong else "every statement fits.")
        )
    return names, [(p, text) for p, (text, _) in said.items()], consistent[0], lines


def answer_text(names: list[str], world: dict[str, bool]) -> str:
    return ", ".join(f"{p}: {'knight' if world[p] else 'knave'}" for p in names)


def make_row(index: int, people: int, rng: random.Random, split: str) -> dict:
    names, statements, world, lines = puzzle(people, rng)
    question = (
        "On an island, knights always tell the truth and knaves always lie. "
        + " ".join(f'{p} says: "{text}."' for p, text in statements)
        + f" Who is a knight and who is a knave? Answer in the form {answer_text(names, dict.fromkeys(names, True))}."
    )
    answer = answer_text(names, world)
    return {
        "id": f"logic-{split}-{index:06d}",
        "messages": [{"role": "user", "content": question}],
        "answer": answer,
        "solution": f"<think>{' '.join(lines)}</think><answer>{answer}</answer>",
        "level": people - 1,
        "skill": "logic",
    }


def write_dataset(out: str | Path, train: int, test: int, seed: int = 0) -> Path:
    """OUT/train.jsonl and OUT/test.jsonl, levels in turn (2 to 5 people)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, count, offset in (("train", train, 0), ("test", test, 1)):
        rng = random.Random(seed * 2 + offset)
        rows = [make_row(i, LEVELS[i % len(LEVELS)], rng, split) for i in range(count)]
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out
