import math

import pytest
import torch

from observe_r1.algos import (
    aggregate,
    kl_divergence,
    loss_denominator,
    mismatch_mask,
    overlong_penalty,
    policy_loss,
    tis_weights,
)


def naive_token_losses(logp, old, adv, clip_low, clip_high, dual_clip):
    out = []
    for lp, ol, a in zip(logp, old, adv, strict=True):
        row = []
        for x, y, z in zip(lp, ol, a, strict=True):
            ratio = math.exp(x - y)
            loss = max(-z * ratio, -z * min(max(ratio, 1 - clip_low), 1 + clip_high))
            if dual_clip and z < 0:
                loss = min(loss, -z * dual_clip)
            row.append(loss)
        out.append(row)
    return out


def naive_aggregate(per_token, mask, mode, max_len):
    if mode == "token_mean":
        return sum(
            x * m for r, mr in zip(per_token, mask, strict=True) for x, m in zip(r, mr, strict=True)
        ) / sum(map(sum, mask))
    if mode == "seq_mean_token_mean":
        return sum(
            sum(x * m for x, m in zip(r, mr, strict=True)) / sum(mr)
            for r, mr in zip(per_token, mask, strict=True)
        ) / len(mask)
    return sum(x * m for r, mr in zip(per_token, mask, strict=True) for x, m in zip(r, mr, strict=True)) / (
        len(mask) * max_len
    )


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
@pytest.mark.parametrize(
    "clip_low, clip_high, dual_clip", [(0.2, 0.2, 0.0), (0.2, 0.28, 0.0), (0.2, 0.28, 3.0)]
)
def test_policy_loss_matches_a_python_loop(mode, clip_low, clip_high, dual_clip):
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 6, generator=gen) * 3
    old = logp + (torch.rand(4, 6, generator=gen) - 0.5) * 1.5  # ratios well outside the clip range too
    adv = torch.randn(4, 1, generator=gen).expand(4, 6).contiguous() * 2
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0], [1] + [0] * 5], dtype=torch.float32)
    denom = loss_denominator([mask[:2], mask[2:]], mode, max_len=6)
    loss, stats = policy_loss(logp, old, adv, mask, clip_low, clip_high, dual_clip, mode, denom)
    per_token = naive_token_losses(logp.tolist(), old.tolist(), adv.tolist(), clip_low, clip_high, dual_clip)
    want = naive_aggregate(per_token, mask.tolist(), mode, 6)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert 0 < stats.clip_fraction < 1 and stats.ratio_min < 1 < stats.ratio_max


def test_on_policy_ratio_is_one_and_gradient_is_reinforce():
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    loss, stats = policy_loss(
        logp, logp.detach(), torch.tensor([[2.0, 2.0]]), torch.ones(1, 2), denominator=2.0
    )
    loss.backward()
    assert stats.clip_fraction == 0 and stats.ratio_mean == 1.0 and stats.approx_kl == 0.0
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, -1.0]]))  # -A / tokens


def test_dual_clip_bounds_negative_advantage_loss():
    logp, old = torch.tensor([[2.0]]), torch.tensor([[0.0]])  # ratio e^2 = 7.39
    adv, mask = torch.tensor([[-1.0]]), torch.ones(1, 1)
    plain, _ = policy_loss(logp, old, adv, mask)
    dual, _ = policy_loss(logp, old, adv, mask, dual_clip=3.0)
    assert plain.item() == pytest.approx(math.exp(2)) and dual.item() == pytest.approx(3.0)


def test_clip_higher_uses_the_high_epsilon_for_positive_advantages():
    logp, old, mask = torch.tensor([[math.log(1.5)]]), torch.zeros(1, 1), torch.ones(1, 1)
    loss, _ = policy_loss(logp, old, torch.tensor([[1.0]]), mask, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(-1.28)


def test_kl_estimators():
    logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    torch.testing.assert_close(kl_divergence(logp, ref, "k1"), torch.tensor([[0.5, -1.0]]))
    k3 = [math.exp(r - p) - (r - p) - 1 for p, r in [(-1.0, -1.5), (-2.0, -1.0)]]
    torch.testing.assert_close(kl_divergence(logp, ref, "k3"), torch.tensor([k3]))
    assert (kl_divergence(logp, ref, "k3") >= 0).all()


def test_aggregation_splits_across_micro_batches_exactly():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 5, generator=gen)
    mask = (torch.rand(8, 5, generator=gen) > 0.3).float()
    mask[:, 0] = 1
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        whole = aggregate(x, mask, mode, loss_denominator([mask], mode, 5))
        denom = loss_denominator([mask[i : i + 1] for i in range(8)], mode, 5)
        parts = sum(aggregate(x[i : i + 1], mask[i : i + 1], mode, denom) for i in range(8))
        torch.testing.assert_close(whole, parts)


def test_truncated_importance_sampling_by_hand():
    # trainer and engine log-probs of three tokens: ratios pi_trainer / pi_engine = e^0.5, e^-0.2, e^2 -> capped at 2
    trainer = torch.tensor([[-1.0, -2.0, -0.5]])
    engine = torch.tensor([[-1.5, -1.8, -2.5]])
    w = tis_weights(trainer, engine, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[math.exp(0.5), math.exp(-0.2), 2.0]]))
    # on-policy (ratio 1) the loss is -sum(w * A) / tokens: advantages 1, -1, 2
    adv, mask = torch.tensor([[1.0, -1.0, 2.0]]), torch.ones(1, 3)
    loss, _ = policy_loss(trainer, trainer, adv, mask, denominator=3.0, token_weights=w)
    torch.testing.assert_close(loss, torch.tensor(-(math.exp(0.5) - math.exp(-0.2) + 4.0) / 3))
    plain, _ = policy_loss(trainer, trainer, adv, mask, denominator=3.0)
    torch.testing.assert_close(plain, torch.tensor(-2.0 / 3))


# ------------------------------------------------------------------ issue 24: clamps, GSPO, CISPO, MIS, overlong


def test_k3_is_clamped_as_verl_and_easyr1_clamp_it():
    """logp 0, ref 12: k3 was 162,741.8 with a non-zero gradient; verl's low_var_kl clamps the log-ratio to
    +-20 and the estimate to <= 10."""
    logp = torch.tensor([[0.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[12.0, -1.5]])
    kl = kl_divergence(logp, ref, "k3")
    small = math.exp(-0.5) + 0.5 - 1
    torch.testing.assert_close(kl.detach(), torch.tensor([[10.0, small]]))
    kl.sum().backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 1] != 0


def test_the_ppo_ratio_has_a_log_ratio_clamp():
    """logp - old = 25 gave a loss and a gradient of 2.4e10."""
    logp = torch.tensor([[25.0]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1))
    assert loss.item() == pytest.approx(math.exp(20)) and stats.ratio_max == pytest.approx(math.exp(20))
    loss.backward()
    assert logp.grad.item() == 0


def test_gspo_by_hand():
    """GSPO (Zheng et al. 2025, eq. 5-7): s_i = exp(mean_t log(pi / pi_old)), the loss per sequence
    -min(s_i A_i, clip(s_i) A_i); with seq_mean_token_mean the mean over sequences. Its gradient: d/dlogp_t of
    -s_i A_i is -A_i s_i / |y_i| for each token (unclipped)."""
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.2, -2.1, -2.6], [-1.5, -0.9, 0.0]])
    adv = torch.tensor([[1.0], [-2.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    s1 = math.exp((0.2 + 0.1 - 0.4) / 3)  # 0.967: inside [0.8, 1.2]
    s2 = math.exp((1.0 + 0.4) / 2)  # 2.01: clipped at 1.2 for A < 0? -A s vs -A clip(s): max is -A s = 4.03
    want = (-1.0 * s1 + 2.0 * s2) / 2
    loss, stats = policy_loss(
        logp, old, adv, mask, 0.2, 0.2, agg="seq_mean_token_mean", denominator=2.0, kind="gspo"
    )
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert stats.clip_fraction == 0.0  # A < 0 with s > 1 + eps: the unclipped term is the larger
    loss.backward()
    torch.testing.assert_close(logp.grad[0], torch.full((3,), -1.0 * s1 / 3 / 2))
    torch.testing.assert_close(logp.grad[1, :2], torch.full((2,), 2.0 * s2 / 2 / 2))
    # a positive advantage above 1 + eps is clipped: no gradient
    loss, stats = policy_loss(
        logp, old, -adv, mask, 0.2, 0.2, agg="seq_mean_token_mean", denominator=2.0, kind="gspo"
    )
    assert loss.item() == pytest.approx((1.0 * s1 - 2.0 * 1.2) / 2, rel=1e-6)
    assert stats.clip_fraction == pytest.approx(2 / 5)


def test_cispo_by_hand():
    """CISPO (MiniMax-M1, eq. 4): -sg(clip(r, 1 - eps_low, 1 + eps_high)) A log pi per token: a token whose
    ratio left the band keeps its gradient, with the clipped weight."""
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -2.0]])  # ratios e^0.5 = 1.65 (clipped to 1.28) and 1
    adv, mask = torch.tensor([[2.0]]), torch.ones(1, 2)
    loss, stats = policy_loss(logp, old, adv, mask, 0.2, 0.28, denominator=2.0, kind="cispo")
    assert loss.item() == pytest.approx(-(1.28 * 2.0 * -1.0 + 1.0 * 2.0 * -2.0) / 2)
    assert stats.clip_fraction == 0.5
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.28 * 2.0 / 2, -1.0 * 2.0 / 2]]))


def test_mismatch_mask_by_hand():
    """MIS / IcePop: tokens whose trainer-to-engine ratio is outside [0.5, 5] get weight 0."""
    trainer = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    engine = torch.tensor([[-1.0, -0.2, -3.0, -2.5]])  # ratios 1, e^-0.8 = 0.45, e^2 = 7.4, e^1.5 = 4.5
    torch.testing.assert_close(mismatch_mask(trainer, engine, 0.5, 5.0), torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    adv, mask = torch.tensor([[1.0, 1.0, 1.0, 1.0]]), torch.ones(1, 4)
    loss, _ = policy_loss(
        trainer, trainer, adv, mask, denominator=4.0, token_weights=mismatch_mask(trainer, engine, 0.5, 5.0)
    )
    assert loss.item() == pytest.approx(-2.0 / 4)


def test_overlong_penalty_by_hand():
    """DAPO eq. 13 with L_max = 10, L_cache = 4: 0 up to 6 tokens, then -(len - 6) / 4, -1 at 10."""
    lengths = torch.tensor([[3, 6, 7, 9, 10]])
    torch.testing.assert_close(
        overlong_penalty(lengths, 10, 4), torch.tensor([[0.0, 0.0, -0.25, -0.75, -1.0]])
    )
    torch.testing.assert_close(
        overlong_penalty(lengths, 10, 4, 0.5), torch.tensor([[0.0, 0.0, -0.125, -0.375, -0.5]])
    )
