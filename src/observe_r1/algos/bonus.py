"""Observe-R1's bonus for the shortest correct response of a group (spec section 4).

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
