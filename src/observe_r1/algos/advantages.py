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
