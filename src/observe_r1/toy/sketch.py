"""Long and sketched reasoning on the synthetic task (SketchThinker-R1's contrast), with gold by construction.

`long_form` pads a reference response's thinking with what long chains of thought do: restating each
observation and re-checking (repeating) the reasoning. `write_pairs` writes the synthetic splits as preference rows for
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


def long_form(reference: str, rng: random.Random) -> str:
    """The reference with verbose thinking: every observed object restated as a sentence (in a shuffled order
    half of the time), then the original reasoning, checked again by repeating it; the observation and the
    answer unchanged. In the words of the task, which the tiny models' tokenizer knows (hedges in English
    that it cannot spell would teach a 4.5M-parameter policy garbled text, not verbosity)."""
    observed = OBSERVE_RE.search(reference)
    lines = [line.rstrip(".") + "." for line in (observed.group(1).splitlines() if observed else [])]
    if rng.random() < 0.5:
        rng.shuffle(lines)
    return THINK_RE.sub(
        lambda m: f"<think>\n{' '.join(lines)}\n{m.group(1)}\n{m.group(1)}\n</think>", reference, count=1
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
