"""Group advantages, Observe-R1's difficulty weights, and the KL-in-reward token advantages.

All functions are pure: tensors in, tensors out. Groups are rows: shapes are [groups, n].
"""

from __future__ import annotations

from enum import Enum

import torch

EPS = 1e-6


class Estimator(str, Enum):
    GRPO = "grpo"  # (r - mean) / (std + eps), unbiased std       (Shao et al. 2024, DeepSeekMath eq. 3)
    DR_GRPO = "dr_grpo"  # r - mean, no std division            (Liu et al. 2025, "Understanding R1-Zero")
    RLOO = "rloo"  # r - mean of the other n - 1 responses         (Ahmadian et al. 2024)


def _grpo(r: torch.Tensor) -> torch.Tensor:
    return (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True, unbiased=True) + EPS)


def _dr_grpo(r: torch.Tensor) -> torch.Tensor:
    return r - r.mean(1, keepdim=True)


def _rloo(r: torch.Tensor) -> torch.Tensor:
    n = r.shape[1]
    return r - (r.sum(1, keepdim=True) - r) / (n - 1)


ESTIMATORS = {Estimator.GRPO: _grpo, Estimator.DR_GRPO: _dr_grpo, Estimator.RLOO: _rloo}


def group_advantages(rewards: torch.Tensor, estimator: str | Estimator = Estimator.GRPO) -> torch.Tensor:
    """[groups, n] rewards -> [groups, n] advantages. A group whose rewards are all equal gets exactly zeros
    (its mean is not exactly its value in floating point: 6 x 1.3 gave -0.105 each after the std division)."""
    rewards = rewards.to(torch.float32)
    advantages = ESTIMATORS[Estimator(estimator)](rewards)
    return advantages.masked_fill(zero_variance_groups(rewards)[:, None], 0.0)


def objective_advantages(
    values: torch.Tensor,  # [groups, n, K] one value per objective; NaN = not applicable
    weights: torch.Tensor,  # [K]
    estimator: str | Estimator = Estimator.GRPO,
) -> torch.Tensor:
    """Multi-objective advantages [groups, n]: each objective normalised within its group on its own, then
    weighted, sum_k w_k * A(r_k), instead of A(sum_k w_k r_k). An objective with a large spread then cannot drown
    the others (decoupled normalisation, as GDPO does for multi-reward RL; the Pareto aims of Factum's
    multi-objective RL in spirit). A NaN counts as its group's mean of that objective (no advantage from it);
    an objective with no value in a group adds nothing there."""
    values = values.to(torch.float32)
    present = ~values.isnan()
    mean = torch.nan_to_num(values).sum(1, keepdim=True) / present.sum(1, keepdim=True).clamp(min=1)
    filled = torch.where(present, values, mean)
    per_objective = [group_advantages(filled[..., k], estimator) for k in range(values.shape[-1])]
    return (torch.stack(per_objective, -1) * weights.to(torch.float32)).sum(-1)


def pareto_ranks(values: torch.Tensor) -> torch.Tensor:
    """[groups, n, K] -> [groups, n] non-domination rank within each group (NSGA-II's fronts, Deb et al. 2002):
    0 for responses no other response dominates, 1 for those only rank-0 ones dominate, and so on. i dominates
    j when it is at least as good in every objective and better in one (higher is better)."""
    ge = (values[:, :, None, :] >= values[:, None, :, :]).all(-1)  # [g, i, j]: i >= j everywhere
    gt = (values[:, :, None, :] > values[:, None, :, :]).any(-1)
    dominates = ge & gt
    ranks = torch.full(values.shape[:2], -1, dtype=torch.long)
    remaining = torch.ones(values.shape[:2], dtype=torch.bool)
    rank = 0
    while remaining.any():
        dominated = (dominates & remaining[:, :, None]).any(1)  # [g, j]: a remaining response dominates j
        front = remaining & ~dominated
        ranks[front] = rank
        remaining &= ~front
        rank += 1
    return ranks


def pareto_advantages(
    values: torch.Tensor,  # [groups, n, K] one value per objective; NaN = not applicable
    weights: torch.Tensor,  # [K]; objectives of weight 0 take no part
    estimator: str | Estimator = Estimator.GRPO,
) -> torch.Tensor:
    """Pareto-aware multi-objective advantages [groups, n] (Factum's multi-objective RL toward a Pareto front):
    a response's score is minus its non-domination rank in the group (`pareto_ranks`), plus a tie-break inside
    its front of 0.49 x tanh(the weighted mean of its objectives' in-group z-scores); the scores are then
    normalised like rewards (`group_advantages`). A dominated response therefore never gets more advantage
    than one that dominates it (their ranks differ by at least 1, the tie-breaks by less), and no objective
    swamps the others: ranks depend on the order of values, not their scale, and the tie-break on z-scores.
    A NaN counts as its group's mean of that objective."""
    used = weights > 0
    values, weights = values[..., used].to(torch.float32), weights[used].to(torch.float32)
    present = ~values.isnan()
    mean = torch.nan_to_num(values).sum(1, keepdim=True) / present.sum(1, keepdim=True).clamp(min=1)
    filled = torch.where(present, values, mean)
    z = torch.stack([group_advantages(filled[..., k]) for k in range(filled.shape[-1])], -1)
    tie = 0.49 * torch.tanh((z * weights).sum(-1) / weights.sum())
    tie = torch.round(
        tie, decimals=4
    )  # float noise of the z-scores (1e-6) must not become a std-normalised gap
    return group_advantages(tie - pareto_ranks(filled).to(torch.float32), estimator)


def difficulty_weights(correct: torch.Tensor, sigma: float = 1.8) -> torch.Tensor:
    """Observe-R1 dynamic weighting: [groups, n] bool -> [groups] f(d) = 4 * sigma * d * (1 - d),
    d the fraction of correct responses. All-correct and all-wrong groups get weight 0; d = 0.5 gets sigma."""
    d = correct.to(torch.float32).mean(1)
    return 4.0 * sigma * d * (1.0 - d)


def zero_variance_groups(rewards: torch.Tensor) -> torch.Tensor:
    """[groups, n] -> [groups] bool: every response of the group has the same reward (DAPO drops these)."""
    return (rewards == rewards[:, :1]).all(1)


def kl_reward_advantages(
    advantages: torch.Tensor,  # [B] sequence advantages
    kl: torch.Tensor,  # [B, T] per-token KL estimate of the rollout policy to the reference
    mask: torch.Tensor,  # [B, T]
    coef: float,
) -> torch.Tensor:
    """Token advantages [B, T] with the KL penalty inside the reward, as OpenRLHF (the original's base) does:
    each token is penalised by -coef * kl_t and the return from token t (gamma = 1) is added to the
    sequence advantage: A_t = A - coef * sum_{t' >= t} kl_t'."""
    penalty = (kl * mask).flip(1).cumsum(1).flip(1)
    return (advantages[:, None] - coef * penalty) * mask
