"""Multiplication of large numbers: a toy task where a tool helps (docs/tools.md, `bench/tools.py`).

"What is 4821 times 739?" A tiny model cannot multiply four-digit numbers in its head, but it can copy the
two numbers into a `python` call and the printed product into its answer. Each row carries two reference
responses for the cold start:
  solution        <think><code>print(4821 * 739)</code><output>
                  3562719
                  </output>
                  </think><answer>3562719</answer>    (the code layout; the <output> block is the observation)
  solution_direct <think>4821 * 739</think><answer>3562719</answer>    (the same without the tool)
Levels set the digits: level L multiplies an (L + 1)-digit number by an (L + 1)-digit one. Gold by
construction; splits never share a question.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

LEVELS = (1, 2, 3)


def row(sid: str, a: int, b: int, level: int) -> dict:
    product = a * b
    return {
        "id": sid,
        "messages": [{"role": "user", "content": f"What is {a} times {b}?"}],
        "answer": str(product),
        "solution": f"<think><code>print({a} * {b})</code><output>\n{product}\n</output>\n</think>"
        f"<answer>{product}</answer>",
        "solution_direct": f"<think>{a} * {b}</think><answer>{product}</answer>",
        "level": level,
        "skill": "multiply",
    }


def write_dataset(
    out_dir: str | Path, train: int, test: int, seed: int = 0, levels=LEVELS, val: int = 0
) -> dict[str, Path]:
    """DIR/train.jsonl, DIR/test.jsonl (and DIR/val.jsonl with `val`), sharing no question."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"toolcalc/{seed}")
    seen: set[tuple[int, int]] = set()
    paths = {}
    for split, count in (("test", test), ("val", val), ("train", train)):
        if not count:
            continue
        rows: list[dict] = []
        while len(rows) < count:
            level = levels[len(rows) % len(levels)]
            low, high = 10**level, 10 ** (level + 1) - 1
            a, b = rng.randint(low, high), rng.randint(low, high)
            if (a, b) in seen:
                continue
            seen.add((a, b))
            rows.append(row(f"{split}-{len(rows):06d}", a, b, level))
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths
