"""Prompt order: `sequential` (file order: the NeuraLadder is consumed easy to hard), `shuffled` (a seeded
permutation per epoch, the baseline) or `online` (ladder order with revisits chosen by measured pass
rate). The sampler's state is part of every checkpoint, so a resumed run draws exactly the prompts the
uninterrupted run would have drawn."""

from __future__ import annotations

from typing import Any

import torch


class PromptSampler:
    def __init__(self, size: int, mode: str = "sequential", seed: int = 0):
        if size < 1:
            raise ValueError("the dataset is empty")
        if mode not in ("sequential", "shuffled"):
            raise ValueError(f"unknown sampler {mode!r}; choose sequential or shuffled")
        self.size, self.mode, self.seed = size, mode, seed
        self.epoch, self.position = 0, 0
        self._order = self._make_order(0)

    def _make_order(self, epoch: int) -> list[int]:
        if self.mode == "sequential":
            return list(range(self.size))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=gen).tolist()

    def next(self, k: int) -> list[int]:
        """The next k dataset indices, continuing into the next epoch when this one runs out."""
        out: list[int] = []
        while len(out) < k:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._make_order(self.epoch)
            take = min(k - len(out), self.size - self.position)
            out += self._order[self.position : self.position + take]
            self.position += take
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "seed": self.seed,
            "size": self.size,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["mode"], state["size"]) != (self.mode, self.size):
            raise ValueError(
                f"checkpoint sampler ({state['mode']}, {state['size']} prompts) does not match this run "
                f"({self.mode}, {self.size} prompts): the data or data.sampler changed"
            )
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._make_order(self.epoch)

    def update(self, indices: list[int], accuracy: list[float]) -> None:
        """Fixed orders ignore the training signal."""


class OnlineSampler:
    """Curriculum by measured pass rate (`data.sampler: online`).

    Walks the ladder in order, but each step only `new_share` of the prompts are new; the rest revisit items
    already reached, drawn with weight p (1 - p) + 0.02, p the item's running pass rate (an exponential
    moving average of its groups' accuracy, started from 1 - difficulty when the row has one). Items near
    p = 0.5 are preferred, and hard items from earlier stages come back (retrospective sampling, as in
    QwenLong-L1); mastered and hopeless items rarely do. Training calls `update` after scoring; the whole
    state, random generator included, is in every checkpoint."""

    def __init__(
        self,
        size: int,
        seed: int = 0,
        prior: list[float] | None = None,
        new_share: float = 0.5,
        ema: float = 0.5,
    ):
        if size < 1:
            raise ValueError("the dataset is empty")
        self.size, self.seed, self.new_share, self.ema = size, seed, new_share, ema
        self.pass_rate = torch.tensor(prior if prior is not None else [0.5] * size, dtype=torch.float64)
        self.seen = torch.zeros(size, dtype=torch.long)
        self.frontier = 0  # items [0, frontier) of the ladder have been reached
        self.gen = torch.Generator().manual_seed(seed)

    def next(self, k: int) -> list[int]:
        reached = self.frontier  # revisits come from items reached before this step
        fresh = min(self.size - reached, k if reached == 0 else round(k * self.new_share))
        out = list(range(reached, reached + fresh))
        self.frontier += fresh
        pool = reached or self.frontier
        weights = self.pass_rate[:pool] * (1 - self.pass_rate[:pool]) + 0.02
        while len(out) < k:  # without replacement first; with it only if the pool is smaller than the need
            take = min(k - len(out), pool)
            out += torch.multinomial(weights, take, replacement=False, generator=self.gen).tolist()
        return out

    def update(self, indices: list[int], accuracy: list[float]) -> None:
        for i, a in zip(indices, accuracy, strict=True):
            self.pass_rate[i] = (1 - self.ema) * self.pass_rate[i] + self.ema * a
            self.seen[i] += 1

    def state_dict(self) -> dict[str, Any]:
        return {"mode": "online", "size": self.size, "seed": self.seed, "frontier": self.frontier,
                "pass_rate": self.pass_rate.clone(), "seen": self.seen.clone(), "gen": self.gen.get_state()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["mode"], state["size"]) != ("online", self.size):
            raise ValueError(f"checkpoint sampler ({state['mode']}, {state['size']} prompts) does not match this run "
                             f"(online, {self.size} prompts): the data or data.sampler changed")  # fmt: skip
        self.seed, self.frontier = state["seed"], state["frontier"]
        self.pass_rate, self.seen = state["pass_rate"].clone(), state["seen"].clone()
        self.gen.set_state(state["gen"])


def make_sampler(mode: str, size: int, seed: int, prior: list[float] | None = None, new_share: float = 0.5,
                 ema: float = 0.5) -> PromptSampler | OnlineSampler:  # fmt: skip
    if mode == "online":
        return OnlineSampler(size, seed, prior, new_share, ema)
    return PromptSampler(size, mode, seed)
