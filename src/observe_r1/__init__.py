"""observe-r1: RL post-training of vision-language models (GRPO + the Observe-R1 recipe).

Layers, lowest first; a package imports only its own layer and those before it (tests/test_layers.py):
  config    the schema                      algos     pure tensor functions of the RL algorithm
  rewards   accuracy, formats, combination  models    inputs (chat + images -> tensors), policy loading
  data      datasets, prompts, samplers     rollout   generation backends and the step's Trajectory
  toy       synthetic task and tiny models  training  the machinery the loops share
  recipes   the programs (grpo, sft, ...)   cli       the `observe-r1` command

The Python API (observe_r1.recipes.api), imported on first use so that `import observe_r1.config` stays light:

    from observe_r1 import GRPOConfig, GRPOTrainer
"""

import importlib
from importlib.metadata import version
from typing import Any

__version__ = version("observe-r1")
API = ("GRPOConfig", "GRPOTrainer", "SFTConfig", "SFTTrainer")
__all__ = [*API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in API:
        return getattr(importlib.import_module("observe_r1.recipes.api"), name)
    raise AttributeError(f"module 'observe_r1' has no attribute {name!r}")
