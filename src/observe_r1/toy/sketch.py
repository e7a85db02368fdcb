"""Long and sketched reasoning on the synthetic task (SketchThinker-R1's contrast), with gold by construction.

`long_form` pads a reference response's thinking with what long chains of thought do: restating each
observation, re-checking, hedging. `write_pairs` writes the synthetic splits as preference rows for
`observe-r1 rm`: the reference (concise) response `chosen`, its long form `rejected`; so a reward model
learns to prefer the sketch (SketchJudge's job), and the `long` column holds the long form for SFT.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from observe_r1.toy.synth import LEVELS, write_dataset

THINK_RE = re.compile(r"<think>\n(.*?)\n</think>", re.S)
OBSERVE_RE = re.compile(r"<observe>\n(.*?)\n</observe>", re.S)
OPENERS = (
    "Let me look at the image carefully.",
    "Okay, let me think about this step by step.",
    "Hmm, let me start by going over what I see.",
)
CHECKS = ("Wait, let me double-check that.", "Let me verify this once more.", "Hmm, is that right? Yes.")
CLOSERS = (
    "I am fairly confident now.",
    "So after checking everything again,",
    "Let me make sure I did not miss anything.",
)


def long_form(reference: str, rng: random.Random) -> str:
    """The reference with verbose thinking: an opener, every observed object restated with a re-check, the
    original reasoning, and a closing re-check; the observation and the answer unchanged."""
    observed = OBSERVE_RE.search(reference)
    lines = observed.group(1).splitlines() if observed else []
    restated = " ".join(f"I can see {line.rstrip('.')}. {rng.choice(CHECKS)}" for line in lines)
    return THINK_RE.sub(
        lambda m: (
            f"<think>\n{rng.choice(OPENERS)} {restated}\n{m.group(1)}\n{rng.choice(CLOSERS)} "
            f"{rng.choice(CHECKS)}\n</think>"
        ),
        reference,
        count=1,
    )


def write_pairs(
    out_dir: str | Path, train: int, test: int, seed: int = 0, levels: tuple[int, ...] = tuple(LEVELS)
) -> dict[str, Path]:
    """The synthetic splits (`toy.synth.write_dataset`) with `chosen` (the reference), `rejected` and `long`
    (its long form) in every row."""
    paths = write_dataset(out_dir, train, test, seed=seed, levels=levels)
    rng = random.Random(seed)
    for path in paths.values():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for row in rows:
            row["long"] = long_form(row["solution"], rng)
            row["chosen"], row["rejected"] = row["solution"], row["long"]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths
