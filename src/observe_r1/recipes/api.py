"""The Python API: the recipes driven from a notebook or a script, with datasets in memory, reward callables
and step-end callbacks. `observe-r1 train` / `observe-r1 sft` are these with a YAML file.

    from observe_r1 import GRPOConfig, GRPOTrainer

    config = GRPOConfig.load("configs/tiny_cpu.yaml", ["optim.max_steps=3"])  # or GRPOConfig() and set fields
    trainer = GRPOTrainer(config, train_dataset=rows, reward_funcs=[my_reward, "observe_format"],
                          callbacks=[lambda step, metrics: print(step, metrics["accuracy"])])
    output_dir = trainer.train()   # checkpoints, metrics and report exactly as the CLI writes them

`rows`: a list of dicts in any layout `observe-r1 data check` reads (images may be PIL images or paths),
a `datasets.Dataset`, or paths. A reward is a callable with the native signature (docs/rewards.md), a
built-in name, a `file.py:fn` reference, or a `(reward, weight)` pair; callables defined in a module are
scored in worker processes, those defined in a notebook or `__main__` in this process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from observe_r1.config import Config, ConfigError, RewardTerm, load_config
from observe_r1.recipes.grpo import train
from observe_r1.recipes.sft import sft
from observe_r1.recipes.stages import run_stages
from observe_r1.training.loop import Callback
from observe_r1.training.setup import Inputs

Reward = Callable[..., list] | str | RewardTerm | tuple[Any, float]


GRPOConfig = SFTConfig = (
    Config  # one schema for every recipe; `Config.load(path, overrides)` reads a YAML file
)


class GRPOTrainer:
    """GRPO with the Observe-R1 recipe (observe_r1.recipes.grpo). `reward_funcs`, when given, replace
    `reward.terms`; `train_dataset` / `eval_dataset` replace `data.train` / `data.test`; each callback is
    called as `callback(step, metrics)` at the end of every step and may return True to stop the run there
    (with a checkpoint of that step: the same config resumes it)."""

    def __init__(self, config: Config | str | Path | None = None, *, train_dataset: Any = None,
                 eval_dataset: Any = None, reward_funcs: Sequence[Reward] | None = None,
                 callbacks: Sequence[Callback] = ()):  # fmt: skip
        cfg = config if isinstance(config, Config) else load_config(config)
        functions: dict[str, Callable[..., list]] = {}
        if reward_funcs is not None:
            terms = [reward_term(r, functions) for r in reward_funcs]
            cfg = dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, terms=terms))
        self.config = cfg.validate()
        self.inputs = Inputs(train_dataset, eval_dataset, functions, list(callbacks))

    def train(self) -> Path:
        """Run it (each of `config.stages` in turn when there are stages); returns the output directory."""
        return run_stages(self.config, self.inputs) if self.config.stages else train(self.config, self.inputs)


class SFTTrainer:
    """Supervised fine-tuning on reference responses (observe_r1.recipes.sft), with the same datasets and
    callbacks as GRPOTrainer; `train(export=DIR)` also writes the final model there."""

    def __init__(self, config: Config | str | Path | None = None, *, train_dataset: Any = None,
                 eval_dataset: Any = None, callbacks: Sequence[Callback] = ()):  # fmt: skip
        self.config = (config if isinstance(config, Config) else load_config(config)).validate()
        self.inputs = Inputs(train_dataset, eval_dataset, {}, list(callbacks))

    def train(self, export: str | Path | None = None) -> Path:
        return sft(self.config, export, self.inputs)


def reward_term(reward: Reward, functions: dict[str, Callable[..., list]]) -> RewardTerm:
    """A reward as a config term; a callable is registered in `functions` under its name."""
    weight = 1.0
    if isinstance(reward, tuple):
        reward, weight = reward
    if isinstance(reward, RewardTerm):
        return reward
    if isinstance(reward, str):
        return RewardTerm(reward, float(weight))
    if not callable(reward):
        raise ConfigError(f"reward_funcs: {reward!r} is not a callable, a name or a (reward, weight) pair")
    name = getattr(reward, "__name__", type(reward).__name__)
    if name in functions and functions[name] is not reward:
        raise ConfigError(f"reward_funcs: two different functions are named {name!r}")
    functions[name] = reward
    return RewardTerm(name, float(weight))
