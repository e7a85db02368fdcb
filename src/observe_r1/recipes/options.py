"""The options of `observe-r1 demo` and `observe-r1 ablate`: plain dataclasses, imported by the CLI to build
its parser without loading the recipes. Imports nothing of observe_r1."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path


@dataclasses.dataclass
class DemoOptions:
    out: Path
    seed: int = 0
    pool: int = 320  # training prompts scored for the ladder
    test: int = 200
    steps: int = 120  # GRPO steps: 4 passes over a 240-item ladder (40 were too few: docs/results.md)
    # validation items (never the test split): greedy accuracy on them every `eval_every` steps picks the
    # checkpoint reported as "after"; 0 = no validation, the last checkpoint is "after"
    val: int = 100
    eval_every: int = 10
    k: int = 4  # responses per item for the ladder
    model: str = ""  # a cold-start checkpoint; "" = the shipped one
    # synthetic levels of the pool and the test split: counting, the skill this model can still learn by RL
    # (levels 2-6 are held back by what its 112 px, 4-layer vision tower can see; docs/results.md)
    levels: tuple[int, ...] = (1,)


@dataclasses.dataclass
class AblationOptions:
    out: Path
    seeds: Sequence[int] = (0, 1, 2)
    variants: str = "abcde"
    pool: int = 320
    test: int = 200
    steps: int = 40
    eval_every: int = 10
    k: int = 4
    levels: tuple[int, ...] = DemoOptions.levels  # the demo's
