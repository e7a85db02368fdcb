"""NeuraLadder: order a scored dataset from easy to hard, with smoothed level boundaries (spec section 6).

Input: items with a difficulty (1 - correct/k over k sampled responses) and a complexity (mean response
length in tokens). Steps, each a small function:
  clean      difficulty-1 items go to a review list (never silently kept: their gold may be wrong), unless
             `keep_unsolved` says the golds are right by construction (the toy tasks): then they pass the
             review and make the hardest level; difficulty-0 items below `min_complexity` are dropped
             (trivial and short).
  levels     items grouped by difficulty, easy first, each level sorted by complexity.
  subsample  optional per-level proportions (the paper's share grows with difficulty, ~1.5% -> ~20%):
             the largest dataset with exactly those shares is kept.
  mix        each level passes (1 - own_share) / 2 of its items to each neighbouring stage, its least
             complex to the easier stage and its most complex to the harder one, and each stage is
             shuffled. Every item appears once; the ramp has no cliffs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Item:
    key: Any  # the caller's handle (a Sample)
    difficulty: float
    complexity: float


@dataclass
class Ladder:
    rows: list[tuple[Item, int]]  # in training order, with the stage (level) each row is in
    review: list[Item] = field(default_factory=list)  # difficulty 1
    dropped: list[Item] = field(default_factory=list)  # trivial (difficulty 0, short) or subsampled away
    stages: list[float] = field(default_factory=list)  # the difficulty of each stage


def clean(
    items: list[Item], min_complexity: float, keep_unsolved: bool = False
) -> tuple[list[Item], list[Item], list[Item]]:
    """(kept, review, dropped)."""
    review = [] if keep_unsolved else [it for it in items if it.difficulty >= 1.0]
    dropped = [it for it in items if it.difficulty <= 0.0 and it.complexity < min_complexity]
    gone = {id(it) for it in review + dropped}
    return [it for it in items if id(it) not in gone], review, dropped


def levels(items: list[Item]) -> list[list[Item]]:
    """Items grouped by difficulty (easy first), each group ordered by complexity."""
    by: dict[float, list[Item]] = {}
    for it in items:
        by.setdefault(it.difficulty, []).append(it)
    return [sorted(by[d], key=lambda it: it.complexity) for d in sorted(by)]


def subsample(
    groups: list[list[Item]], proportions: list[float], rng: random.Random
) -> tuple[list[list[Item]], list[Item]]:
    """Keep the largest subset whose level sizes follow `proportions` (one weight per level, easy first)."""
    if not proportions:
        return groups, []
    if len(proportions) != len(groups):
        raise ValueError(f"{len(proportions)} proportions for {len(groups)} difficulty levels")
    total = sum(proportions)
    shares = [p / total for p in proportions]
    size = min(len(g) / s for g, s in zip(groups, shares, strict=True) if s > 0)
    kept, dropped = [], []
    for g, s in zip(groups, shares, strict=True):
        keep = set(rng.sample(range(len(g)), min(len(g), round(size * s))))
        kept.append([it for i, it in enumerate(g) if i in keep])
        dropped += [it for i, it in enumerate(g) if i not in keep]
    return kept, dropped


def mix(groups: list[list[Item]], own_share: float, rng: random.Random) -> list[list[Item]]:
    """Stages: each level sends round((1 - own_share) / 2 * size) items to each neighbouring stage, its least
    complex to the easier one and its most complex to the harder one, and keeps the rest; each stage is
    then shuffled. With levels of equal size, stages keep that size, an interior stage is `own_share` its
    own level and an end stage (1 + own_share) / 2."""
    stages: list[list[Item]] = [[] for _ in groups]
    last = len(groups) - 1
    for level, g in enumerate(groups):
        send = round((1 - own_share) / 2 * len(g))
        down = send if level > 0 else 0
        up = send if level < last else 0
        stages[level] += g[down : len(g) - up]
        if down:
            stages[level - 1] += g[:down]
        if up:
            stages[level + 1] += g[len(g) - up :]
    if own_share < 1:  # mixed stages are interleaved; unmixed ones keep the complexity order
        for stage in stages:
            rng.shuffle(stage)
    return stages


def build_ladder(
    items: list[Item],
    own_share: float = 0.6,
    min_complexity: float = 0.0,
    proportions: Sequence[float] = (),
    seed: int = 0,
    keep_unsolved: bool = False,
) -> Ladder:
    if not 0 < own_share <= 1:
        raise ValueError("own_share must be in (0, 1]")
    rng = random.Random(seed)
    kept, review, dropped = clean(items, min_complexity, keep_unsolved)
    groups = levels(kept)
    groups, subsampled = subsample(groups, list(proportions), rng)
    groups = [g for g in groups if g]  # a level given proportion 0 is gone
    stages = mix(groups, own_share, rng)
    rows = [(it, level) for level, stage in enumerate(stages) for it in stage]
    return Ladder(rows, review, dropped + subsampled, [g[0].difficulty for g in groups])


def summary(ladder: Ladder) -> list[dict[str, float]]:
    """Per stage: size, share of the ladder, own-level share, mean difficulty and complexity."""
    out = []
    n = max(len(ladder.rows), 1)
    for level, difficulty in enumerate(ladder.stages):
        stage = [it for it, lv in ladder.rows if lv == level]
        if not stage:
            continue
        out.append(
            {
                "level": level,
                "difficulty": difficulty,
                "size": len(stage),
                "share": len(stage) / n,
                "own_share": sum(it.difficulty == difficulty for it in stage) / len(stage),
                "mean_difficulty": sum(it.difficulty for it in stage) / len(stage),
                "mean_complexity": sum(it.complexity for it in stage) / len(stage),
            }
        )
    return out
