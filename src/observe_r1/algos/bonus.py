"""Length shaping of the rewards: Observe-R1's bonus for the shortest correct response of a group (spec
section 4), and DAPO's soft penalty for responses near the length budget.

Within each group, the shortest correct response (generated tokens, end token included) gets `+coef` if it
is longer than `min_length`. If the shortest correct response is not longer than `min_length`, nobody in the
group gets the bonus (it does not pass to the next shortest): the point is to reward concise but still
reasoned answers, never degenerate answer-only outputs. Ties go to the lowest index. A group with no
correct response is unchanged (the original gave the bonus to response 0 of such groups).
"""

from __future__ import annotations

import torch


def apply_length_bonus(
    rewards: torch.Tensor,  # [groups, n] float
    correct: torch.Tensor,  # [groups, n] bool
    lengths: torch.Tensor,  # [groups, n] int, generated tokens including the end token
    coef: float = 0.2,
    min_length: int = 100,
) -> torch.Tensor:
    """New rewards [groups, n] with the bonus added; the inputs are not modified."""
    masked = torch.where(correct, lengths.to(torch.float64), torch.inf)  # [groups, n]
    shortest, index = masked.min(dim=1)  # [groups]; min returns the first index on ties
    gets_bonus = correct.any(dim=1) & (shortest > min_length)  # [groups]
    bonus = torch.zeros_like(rewards)
    bonus[torch.arange(rewards.shape[0]), index] = coef * gets_bonus.to(rewards.dtype)
    return rewards + bonus


def overlong_penalty(
    lengths: torch.Tensor,  # [groups, n] generated tokens
    max_len: int,  # the length budget L_max (rollout.max_new_tokens)
    buffer: int,  # L_cache: the last tokens of the budget, over which the penalty grows
    factor: float = 1.0,
) -> torch.Tensor:
    """DAPO's overlong reward shaping (Yu et al. 2025, eq. 13), [groups, n], times `factor`: 0 up to
    L_max - L_cache tokens, then falling linearly to -1 at L_max (a truncated response), -1 beyond."""
    start = max_len - buffer
    penalty = ((start - lengths.to(torch.float32)) / buffer).clamp(-1.0, 0.0)
    return factor * penalty
