"""Prompt order: `sequential` (file order: the NeuraLadder is consumed easy to hard) or `shuffled` (a seeded
permutation per epoch, the baseline). The position is part of every checkpoint, so a resumed run draws
exactly the prompts the uninterrupted run would have drawn."""

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
