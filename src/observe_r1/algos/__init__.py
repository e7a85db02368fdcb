"""The RL algorithm as pure tensor functions (no config objects, no I/O)."""

from observe_r1.algos.advantages import (
    Estimator,
    difficulty_weights,
    group_advantages,
    kl_reward_advantages,
    objective_advantages,
    zero_variance_groups,
)
from observe_r1.algos.bonus import apply_length_bonus, overlong_penalty
from observe_r1.algos.loss import (
    KLEstimator,
    LossAgg,
    LossStats,
    PolicyLoss,
    aggregate,
    kl_divergence,
    loss_denominator,
    mismatch_mask,
    policy_loss,
    tis_weights,
)
from observe_r1.algos.observe import Advantages, observe_advantages, token_advantages
from observe_r1.algos.preference import bradley_terry_loss, dpo_loss, shrink_perturb

__all__ = [
    "Advantages",
    "Estimator",
    "KLEstimator",
    "LossAgg",
    "LossStats",
    "PolicyLoss",
    "aggregate",
    "apply_length_bonus",
    "bradley_terry_loss",
    "difficulty_weights",
    "dpo_loss",
    "group_advantages",
    "kl_divergence",
    "kl_reward_advantages",
    "loss_denominator",
    "mismatch_mask",
    "objective_advantages",
    "observe_advantages",
    "overlong_penalty",
    "policy_loss",
    "shrink_perturb",
    "tis_weights",
    "token_advantages",
    "zero_variance_groups",
]
