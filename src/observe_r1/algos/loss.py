"""The PPO-clip policy loss with its variants: clip-higher, dual-clip, three aggregation modes, KL, entropy.

Pure functions on [B, T] tensors (B sequences, T completion tokens, `mask` 1 on real tokens).
Aggregation divides by a `denominator` computed over the whole mini-batch (all micro-batches and all
processes, see `loss_denominator`), so gradient accumulation over 8 micro-batches of 1 equals one
micro-batch of 8, and 2 processes equal 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch


class LossAgg(str, Enum):
    TOKEN_MEAN = "token_mean"  # sum over all tokens / number of tokens            (DAPO, Yu et al. 2025)
    SEQ_MEAN_TOKEN_MEAN = "seq_mean_token_mean"  # mean over sequences of token means (original GRPO)
    SEQ_MEAN_TOKEN_SUM_NORM = "seq_mean_token_sum_norm"  # token sums / (sequences * max_len)  (Dr.GRPO)


def _token_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum()


def _seq_token_mean_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((x * mask).sum(1) / mask.sum(1).clamp(min=1)).sum()


# numerator of each mode; the denominator (tokens, sequences, or sequences * max_len) comes from outside
AGGREGATORS: dict[LossAgg, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    LossAgg.TOKEN_MEAN: _token_sum,
    LossAgg.SEQ_MEAN_TOKEN_MEAN: _seq_token_mean_sum,
    LossAgg.SEQ_MEAN_TOKEN_SUM_NORM: _token_sum,
}


def loss_denominator(masks: list[torch.Tensor], mode: str | LossAgg, max_len: int) -> float:
    """What the aggregated sum is divided by, for one mini-batch given as the masks of its micro-batches."""
    mode = LossAgg(mode)
    if mode is LossAgg.TOKEN_MEAN:
        return float(sum(m.sum() for m in masks))
    sequences = sum(m.shape[0] for m in masks)
    return float(sequences * (max_len if mode is LossAgg.SEQ_MEAN_TOKEN_SUM_NORM else 1))


def aggregate(x: torch.Tensor, mask: torch.Tensor, mode: str | LossAgg, denominator: float) -> torch.Tensor:
    return AGGREGATORS[LossAgg(mode)](x, mask.to(x.dtype)) / max(denominator, 1e-8)


class KLEstimator(str, Enum):
    K1 = "k1"  # log p - log p_ref                                    (Schulman 2020, "Approximating KL")
    K3 = "k3"  # exp(log p_ref - log p) - (log p_ref - log p) - 1, >= 0, low variance


KL_ESTIMATORS: dict[KLEstimator, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    KLEstimator.K1: lambda logp, ref: logp - ref,
    KLEstimator.K3: lambda logp, ref: torch.exp(ref - logp) - (ref - logp) - 1,
}


def kl_divergence(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str | KLEstimator) -> torch.Tensor:
    """[B, T] per-token KL estimate of the policy to the reference."""
    return KL_ESTIMATORS[KLEstimator(estimator)](logp, ref_logp)


def tis_weights(trainer_logp: torch.Tensor, engine_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """[B, T] truncated importance-sampling weights min(pi_trainer / pi_engine, cap) for tokens sampled by an
    inference engine whose numerics differ from the trainer's (Yao et al. 2025, "Your efficient RL framework
    secretly brings you off-policy RL training"; verl's and TRL's TIS), detached."""
    return torch.exp(trainer_logp - engine_logp).clamp(max=cap).detach()


@dataclass
class LossStats:
    clip_fraction: float  # share of tokens where the clipped term was chosen
    approx_kl: float  # mean (old - new) log-ratio: how far the update moved from the rollout policy
    ratio_mean: float
    ratio_max: float
    ratio_min: float


def policy_loss(
    logp: torch.Tensor,  # [B, T] log-probs of the sampled tokens under the current policy
    old_logp: torch.Tensor,  # [B, T] under the rollout policy
    advantages: torch.Tensor,  # [B, T] (or [B, 1], broadcast)
    mask: torch.Tensor,  # [B, T]
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float = 0.0,  # 0 = off; else c > 1: for negative advantages the loss is at most c * |A|
    agg: str | LossAgg = LossAgg.TOKEN_MEAN,
    denominator: float = 1.0,
    token_weights: torch.Tensor | None = None,  # [B, T] detached per-token weights (truncated IS), or None
) -> tuple[torch.Tensor, LossStats]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7) with clip-higher (DAPO: separate low/high
    epsilon) and dual-clip (Ye et al. 2020); `token_weights` scale each token's term (`tis_weights`).
    Returns the aggregated loss and detached statistics."""
    mask = mask.to(logp.dtype)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip > 0:
        per_token = torch.where(advantages < 0, torch.minimum(per_token, -advantages * dual_clip), per_token)
    if token_weights is not None:
        per_token = per_token * token_weights
    loss = aggregate(per_token, mask, agg, denominator)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        real = mask.bool()
        stats = LossStats(
            clip_fraction=float(((clipped > unclipped).to(mask.dtype) * mask).sum() / n),
            approx_kl=float((-log_ratio * mask).sum() / n),
            ratio_mean=float((ratio * mask).sum() / n),
            ratio_max=float(ratio[real].max()) if real.any() else 1.0,
            ratio_min=float(ratio[real].min()) if real.any() else 1.0,
        )
    return loss, stats
