"""The policy loss (PPO-clip with clip-higher and dual-clip, GSPO, CISPO), three aggregation modes, KL estimators,
the engine/trainer mismatch corrections (truncated IS, masked tokens).

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
    K3 = "k3"  # exp(log p_ref - log p) - (log p_ref - log p) - 1, >= 0, low variance; clamped as verl's low_var_kl


LOG_RATIO_CLAMP = 20.0  # |log-ratio| bound of every ratio taken here (verl and EasyR1 use 20): e^20 = 4.9e8
K3_MAX = 10.0  # the k3 estimate's bound (verl / EasyR1): no gradient from a token past it


def _k3(logp: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    log_ratio = (ref - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (torch.exp(log_ratio) - log_ratio - 1).clamp(max=K3_MAX)


KL_ESTIMATORS: dict[KLEstimator, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    KLEstimator.K1: lambda logp, ref: logp - ref,
    KLEstimator.K3: _k3,
}


def kl_divergence(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str | KLEstimator) -> torch.Tensor:
    """[B, T] per-token KL estimate of the policy to the reference."""
    return KL_ESTIMATORS[KLEstimator(estimator)](logp, ref_logp)


def _ratio(logp: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return torch.exp((logp - other).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def tis_weights(trainer_logp: torch.Tensor, engine_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """[B, T] truncated importance-sampling weights min(pi_trainer / pi_engine, cap) for tokens sampled by an
    inference engine whose numerics differ from the trainer's (Yao et al. 2025, "Your efficient RL framework
    secretly brings you off-policy RL training"; verl's and TRL's TIS), detached."""
    return _ratio(trainer_logp, engine_logp).clamp(max=cap).detach()


def mismatch_mask(
    trainer_logp: torch.Tensor, engine_logp: torch.Tensor, low: float, high: float
) -> torch.Tensor:
    """[B, T] 1.0 where the trainer-to-engine ratio pi_trainer / pi_engine of a token lies in [low, high], else 0:
    tokens the two disagree on too much get no loss (masked importance sampling; IcePop, Ling team 2025, eq. 3,
    whose M(k) is this mask times the ratio k: with `tis_weights` beside it, capped at `high`). Detached."""
    ratio = _ratio(trainer_logp, engine_logp)
    return ((ratio >= low) & (ratio <= high)).to(trainer_logp.dtype).detach()


class PolicyLoss(str, Enum):
    PPO = "ppo"  # token ratios, clipped                         (Schulman et al. 2017, eq. 7)
    GSPO = "gspo"  # one length-normalised ratio per sequence     (Zheng et al. 2025, "GSPO", eq. 5-7)
    CISPO = "cispo"  # clipped, stop-gradient IS weight x log p     (MiniMax-M1, Chen et al. 2025, eq. 4)


def _ppo_terms(logp, old_logp, advantages, mask, clip_low, clip_high):
    ratio = _ratio(logp, old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped, ratio


def _gspo_terms(logp, old_logp, advantages, mask, clip_low, clip_high):
    """s_i = exp(mean_t log(pi / pi_old)) over the sequence's tokens, in the token form of GSPO-token (eq. 13):
    s_i,t = sg[s_i] pi(y_t) / sg[pi(y_t)], whose value is s_i and whose gradient is GSPO's."""
    tokens = mask.sum(1, keepdim=True).clamp(min=1)
    log_s = ((logp - old_logp) * mask).sum(1, keepdim=True) / tokens  # [B, 1]
    log_s = log_s.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(logp - logp.detach() + log_s.detach())  # [B, T], each row's value s_i
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped, ratio


def _cispo_terms(logp, old_logp, advantages, mask, clip_low, clip_high):
    """-sg(clip(r, 1 - eps_low, 1 + eps_high)) A log pi per token: every token keeps a gradient, its weight
    clipped (PPO drops the tokens whose ratio left the band)."""
    ratio = _ratio(logp, old_logp)
    weight = ratio.clamp(1.0 - clip_low, 1.0 + clip_high).detach()
    return -weight * advantages * logp, weight != ratio.detach(), ratio


POLICY_LOSSES = {PolicyLoss.PPO: _ppo_terms, PolicyLoss.GSPO: _gspo_terms, PolicyLoss.CISPO: _cispo_terms}


@dataclass
class LossStats:
    clip_fraction: float  # share of tokens whose term was clipped (CISPO: whose IS weight was)
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
    token_weights: torch.Tensor
    | None = None,  # [B, T] detached per-token weights (truncated IS, a mask), or None
    kind: str | PolicyLoss = PolicyLoss.PPO,
) -> tuple[torch.Tensor, LossStats]:
    """The policy-gradient loss `kind` (PPO's clipped surrogate with clip-higher, DAPO's separate low/high
    epsilon, and dual-clip, Ye et al. 2020; GSPO; CISPO); `token_weights` scale each token's term
    (`tis_weights`, `mismatch_mask`). Every ratio's log is clamped to +-LOG_RATIO_CLAMP (a log-ratio of 25 once
    gave a loss and gradient of 2.4e10). Returns the aggregated loss and detached statistics."""
    mask = mask.to(logp.dtype)
    per_token, clipped, ratio = POLICY_LOSSES[PolicyLoss(kind)](
        logp, old_logp, advantages, mask, clip_low, clip_high
    )
    if dual_clip > 0 and PolicyLoss(kind) is not PolicyLoss.CISPO:
        per_token = torch.where(advantages < 0, torch.minimum(per_token, -advantages * dual_clip), per_token)
    if token_weights is not None:
        per_token = per_token * token_weights
    loss = aggregate(per_token, mask, agg, denominator)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        real = mask.bool()
        stats = LossStats(
            clip_fraction=float((clipped.to(mask.dtype) * mask).sum() / n),
            approx_kl=float(((old_logp - logp) * mask).sum() / n),
            ratio_mean=float((ratio * mask).sum() / n),
            ratio_max=float(ratio[real].max()) if real.any() else 1.0,
            ratio_min=float(ratio[real].min()) if real.any() else 1.0,
        )
    return loss, stats
