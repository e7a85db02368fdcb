import math

import pytest
import torch

from observe_r1.algos import difficulty_weights, group_advantages, kl_reward_advantages, zero_variance_groups
from observe_r1.algos.advantages import pareto_advantages, pareto_ranks


def naive(rows, estimator):
    out = []
    for r in rows:
        n = len(r)
        mean = sum(r) / n
        if estimator == "grpo":
            std = math.sqrt(sum((x - mean) ** 2 for x in r) / (n - 1))
            out.append([(x - mean) / (std + 1e-6) for x in r])
        elif estimator == "dr_grpo":
            out.append([x - mean for x in r])
        else:
            out.append([x - (sum(r) - x) / (n - 1) for x in r])
    return out


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("seed", range(5))
def test_group_advantages_match_a_python_loop(estimator, seed):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 4, (6, 8), generator=gen).float() * 0.5 + torch.rand(6, 8, generator=gen) * (
        seed % 2
    )
    got = group_advantages(rewards, estimator)
    torch.testing.assert_close(got, torch.tensor(naive(rewards.tolist(), estimator)), rtol=1e-5, atol=1e-5)


def test_grpo_by_hand():
    # rewards 1.5, 0.5, 0, 0: mean 0.5, unbiased std sqrt((1 + 0 + .25 + .25) / 3) = sqrt(0.5)
    got = group_advantages(torch.tensor([[1.5, 0.5, 0.0, 0.0]]), "grpo")
    s = math.sqrt(0.5) + 1e-6
    torch.testing.assert_close(got, torch.tensor([[1.0 / s, 0.0, -0.5 / s, -0.5 / s]]))


def test_equal_rewards_give_zero_advantage():
    for est in ("grpo", "dr_grpo", "rloo"):
        assert torch.equal(group_advantages(torch.full((2, 4), 1.5), est), torch.zeros(2, 4))
    assert zero_variance_groups(torch.tensor([[1.0, 1.0], [1.0, 0.0]])).tolist() == [True, False]


def test_difficulty_weight_table_from_the_spec():
    # n = 8, sigma = 1.8: f = 0, 0.7875, 1.35, 1.6875, 1.8, 1.6875, 1.35, 0.7875, 0 for 0..8 correct
    correct = torch.tensor([[j < k for j in range(8)] for k in range(9)])
    want = torch.tensor([0, 0.7875, 1.35, 1.6875, 1.8, 1.6875, 1.35, 0.7875, 0])
    torch.testing.assert_close(difficulty_weights(correct, 1.8), want)


def test_difficulty_weights_depend_on_the_count_not_the_positions():
    a = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[0, 0, 0, 1, 0, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(difficulty_weights(a), difficulty_weights(b))
    torch.testing.assert_close(difficulty_weights(a, sigma=1.0), torch.tensor([4 * 0.25 * 0.75]))


def test_kl_in_reward_is_minus_coef_times_the_kl_still_to_come():
    adv = torch.tensor([1.0, -0.5])
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.5, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float32)
    got = kl_reward_advantages(adv, kl, mask, coef=0.01)
    want = torch.zeros(2, 4)
    for i in range(2):
        for t in range(4):
            if mask[i, t]:
                future = sum(float(kl[i, u] * mask[i, u]) for u in range(t, 4))
                want[i, t] = adv[i] - 0.01 * future
    torch.testing.assert_close(got, want)


def test_objective_advantages_normalise_each_objective_apart():
    from observe_r1.algos import objective_advantages

    # two objectives that disagree, one with a 100x larger spread: per objective they cancel; summed first,
    # the large one wins alone
    values = torch.tensor([[[0.0, 100.0], [1.0, 0.0]]])  # [groups=1, n=2, K=2]
    torch.testing.assert_close(objective_advantages(values, torch.tensor([1.0, 1.0])), torch.zeros(1, 2))
    summed = group_advantages(values.sum(-1))
    torch.testing.assert_close(summed, torch.tensor([[0.7071, -0.7071]]), atol=1e-4, rtol=0)
    # weights, by hand: 2 * A(a) + 0.5 * A(b) = 2 * [-.7071, .7071] + 0.5 * [.7071, -.7071]
    torch.testing.assert_close(objective_advantages(values, torch.tensor([2.0, 0.5])),
                               torch.tensor([[-1.0607, 1.0607]]), atol=1e-4, rtol=0)  # fmt: skip
    # NaN (not applicable) counts as the group mean: [1, nan, 0] -> [1, .5, 0] -> [1, 0, -1]
    nan = torch.tensor([[[1.0], [float("nan")], [0.0]]])
    torch.testing.assert_close(objective_advantages(nan, torch.tensor([1.0])), torch.tensor([[1.0, 0.0, -1.0]]),
                               atol=1e-5, rtol=0)  # fmt: skip
    # one objective of weight 1 is the plain group advantage
    one = torch.tensor([[[0.0], [1.0], [1.0], [0.5]]])
    torch.testing.assert_close(objective_advantages(one, torch.ones(1)), group_advantages(one[..., 0]))


def test_observe_advantages_per_objective_adds_the_bonus_to_the_correctness_objective():
    from observe_r1.algos import observe_advantages

    rewards = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    correct = rewards.bool()
    lengths = torch.tensor([[150, 120, 90, 200]])
    objectives = torch.stack([rewards, torch.tensor([[1.0, 0.0, 1.0, 0.0]])], -1)  # accuracy, format
    out = observe_advantages(rewards, correct, lengths, 0.2, 100, objectives=objectives,
                             objective_weights=torch.tensor([1.0, 0.5]), bonus_objective=0)  # fmt: skip
    expected = group_advantages(torch.tensor([[1.0, 1.2, 0.0, 0.0]])) + 0.5 * group_advantages(
        objectives[..., 1]
    )
    torch.testing.assert_close(out.sequence, (out.weights[:, None] * expected).flatten())


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_all_equal_groups_get_exactly_zero_despite_rounding(estimator):
    """6 x 1.3: the mean is not exactly 1.3 in float32, and the std division turned the rounding into -0.105
    each (docs/grpo.md: zero-variance groups get exactly 0)."""
    rewards = torch.cat([torch.full((1, 6), 1.3), torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0, 1.0]])])
    adv = group_advantages(rewards, estimator)
    assert adv[0].tolist() == [0.0] * 6 and adv[1].abs().sum() > 0


def test_observe_advantages_of_an_all_equal_group_are_zero_without_difficulty_weighting():
    from observe_r1.algos import observe_advantages

    rewards, correct = torch.full((1, 8), 0.7), torch.zeros(1, 8, dtype=torch.bool)
    out = observe_advantages(rewards, correct, torch.full((1, 8), 10), difficulty_weighting=False)
    assert out.sequence.tolist() == [0.0] * 8  # was +0.056 each


def naive_ranks(points: list[tuple[float, ...]]) -> list[int]:
    """Non-domination ranks by peeling fronts in plain Python."""
    ranks, remaining, rank = [None] * len(points), set(range(len(points))), 0

    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b, strict=True)) and any(
            x > y for x, y in zip(a, b, strict=True)
        )

    while remaining:
        front = {i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining)}
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
    return ranks


def test_pareto_ranks_against_a_python_loop():
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 4, (50, 8, 3), generator=g).float()  # ties are common
    ranks = pareto_ranks(values)
    for group, row in zip(values.tolist(), ranks.tolist(), strict=True):
        assert row == naive_ranks([tuple(p) for p in group])


def test_pareto_advantages_never_favour_a_dominated_response():
    g = torch.Generator().manual_seed(1)
    for estimator in ("grpo", "dr_grpo", "rloo"):
        values = torch.randn(40, 6, 3, generator=g) * torch.tensor([1.0, 100.0, 0.01])
        values[:, 0] = values[:, 1] + torch.tensor([0.0, 1.0, 0.0])  # response 0 dominates response 1
        adv = pareto_advantages(values, torch.tensor([1.0, 0.5, 2.0]), estimator)
        v = values
        dominates = (v[:, :, None] >= v[:, None]).all(-1) & (v[:, :, None] > v[:, None]).any(-1)  # [g, i, j]
        higher = adv[:, :, None] > adv[:, None, :]
        assert bool(higher[dominates].all()), estimator
        assert bool((adv[:, 0] > adv[:, 1]).all())


def test_pareto_opposed_objectives_one_100x_wider_neither_swamps():
    """(1, -100), (0, 0), (0.5, -50): no response dominates another, and per unit of spread they trade off
    evenly: zero advantage each (the weighted sum would follow the wide objective alone). A response better
    in both gets the most."""
    values = torch.tensor([[[1.0, -100.0], [0.0, 0.0], [0.5, -50.0]]])
    weights = torch.tensor([1.0, 1.0])
    torch.testing.assert_close(pareto_advantages(values, weights), torch.zeros(1, 3))
    summed = group_advantages((values * weights).sum(-1))
    assert summed[0, 1] > summed[0, 2] > summed[0, 0]  # the wide objective decides alone
    better = torch.tensor([[[1.0, -100.0], [0.0, 0.0], [0.5, -50.0], [1.0, 0.0]]])
    adv = pareto_advantages(better, weights)
    assert adv[0, 3] == adv.max() and adv[0, 3] > 0 and bool((adv[0, :3] < 0).all())
    # an objective's scale changes nothing
    scaled = better * torch.tensor([1.0, 1e-3])
    torch.testing.assert_close(pareto_advantages(scaled, weights), adv)


def test_pareto_advantages_edge_cases():
    same = torch.ones(2, 4, 2)
    torch.testing.assert_close(pareto_advantages(same, torch.tensor([1.0, 1.0])), torch.zeros(2, 4))
    nan = torch.tensor([[[1.0, float("nan")], [0.0, 1.0], [0.0, 0.0]]])  # NaN: the group's mean, 0.5
    adv = pareto_advantages(nan, torch.tensor([1.0, 1.0]))
    assert adv[0, 2] < adv[0, 1] and adv[0, 2] < adv[0, 0]  # (0, 0) is dominated by both
    # an objective of weight 0 takes no part
    torch.testing.assert_close(
        pareto_advantages(torch.tensor([[[1.0, 0.0], [0.0, 9.0]]]), torch.tensor([1.0, 0.0])),
        pareto_advantages(torch.tensor([[[1.0], [0.0]]]), torch.tensor([1.0])),
    )
