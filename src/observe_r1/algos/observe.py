"""Observe-R1's advantages for one rollout step (spec sections 4-5), composed from the pieces beside it:
the shortest-correct bonus, group-normalised advantages of the shaped rewards, the difficulty weight f(d),
and the token advantages with an optional per-token KL penalty inside the return. Pure tensor functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from observe_r1.algos.advantages import (
    difficulty_weights,
    group_advantages,
    kl_reward_advantages,
    objective_advantages,
    pareto_advantages,
)
from observe_r1.algos.bonus import apply_length_bonus


@dataclass
class Advantages:
    rewards: torch.Tensor  # [groups, n] the terms' weighted sum
    shaped: torch.Tensor  # [groups, n] after the bonus
    correct: torch.Tensor  # [groups, n] bool
    weights: torch.Tensor  # [groups] f(d); ones when difficulty weighting is off
    sequence: torch.Tensor  # [B] = [groups * n] sequence advantages, group-major


def observe_advantages(
    rewards: torch.Tensor,  # [groups, n]
    correct: torch.Tensor,  # [groups, n] bool
    lengths: torch.Tensor,  # [groups, n] generated tokens, end token included
    bonus_coef: float = 0.2,
    bonus_min_length: int = 100,
    estimator: str = "grpo",
    difficulty_weighting: bool = True,
    sigma: float = 1.8,
    objectives: torch.Tensor | None = None,  # [groups, n, K] per-objective values (multi-objective)
    objective_weights: torch.Tensor | None = None,  # [K]
    bonus_objective: int = 0,  # the objective the bonus is added to (the correctness term)
    length_penalty: torch.Tensor
    | None = None,  # [groups, n] added to the rewards first (DAPO's overlong shaping)
    pareto: bool = False,  # objectives ranked by non-domination (`pareto_advantages`) instead
) -> Advantages:
    """A_i = f(d) * normalise(r_i + bonus_i) within the group: the bonus goes to the shortest correct response
    longer than `bonus_min_length` (spec 4); the advantages are computed on the rewards after the bonus and
    scaled by f(d) = 4 sigma d (1 - d) of the group's accuracy d (spec 5). With `objectives`, each objective
    is normalised on its own and the results weighted (`objective_advantages`), the bonus (and the length
    penalty) added to objective `bonus_objective` first; with `pareto`, ranked by Pareto non-domination."""
    if length_penalty is not None:
        rewards = rewards + length_penalty
    shaped = (
        apply_length_bonus(rewards, correct, lengths, bonus_coef, bonus_min_length) if bonus_coef else rewards
    )
    weights = difficulty_weights(correct, sigma) if difficulty_weighting else torch.ones(len(rewards))
    if objectives is None:
        base = group_advantages(shaped, estimator)
    else:
        assert objective_weights is not None
        values = objectives.clone().to(torch.float32)
        values[..., bonus_objective] += shaped - rewards + (0 if length_penalty is None else length_penalty)
        combine = pareto_advantages if pareto else objective_advantages
        base = combine(values, objective_weights, estimator)
    sequence = weights[:, None] * base  # [groups, n]
    return Advantages(rewards, shaped, correct, weights, sequence.flatten())


def token_advantages(
    sequence: torch.Tensor,  # [B]
    mask: torch.Tensor,  # [B, T] loss mask
    kl: torch.Tensor | None = None,  # [B, T] per-token KL of the rollout policy to the reference
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """[B, T] token advantages: the sequence advantage on every response token, or with `kl` the return of
    the per-token penalty -kl_coef * kl_t added (KL inside the reward, as OpenRLHF does)."""
    if kl is None:
        return sequence[:, None] * mask
    return kl_reward_advantages(sequence, kl, mask, kl_coef)
