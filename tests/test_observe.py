"""Observe-R1's advantages of one step (algos.observe) against hand-computed numbers, token advantages with the
KL penalty against a Python loop, and DAPO's dynamic-sampling refill on scripted rewards."""

import math
from types import SimpleNamespace

import pytest
import torch

from observe_r1.algos import observe_advantages, token_advantages
from observe_r1.config import load_config
from observe_r1.recipes.grpo import rollout_and_reward
from observe_r1.rewards import RewardResult
from observe_r1.rollout.base import Rollout
from observe_r1.rollout.batch import Trajectory

EPS = 1e-6


def test_observe_advantages_by_hand():
    rewards = torch.tensor([[1.5, 0.5, 1.5, 0.0], [0.5, 0.5, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    correct = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    lengths = torch.tensor([[120, 50, 150, 80], [30, 30, 30, 30], [90, 200, 10, 10]])
    got = observe_advantages(rewards, correct, lengths, bonus_coef=0.2, bonus_min_length=100, sigma=1.8)
    # group 0: the shortest correct response (120 tokens > 100) gets +0.2 -> 1.7, 0.5, 1.5, 0;
    # mean 0.925, unbiased std sqrt((0.775^2 + 0.425^2 + 0.575^2 + 0.925^2) / 3); d = 1/2 -> f = 4*1.8/4 = 1.8
    std0 = math.sqrt((0.775**2 + 0.425**2 + 0.575**2 + 0.925**2) / 3) + EPS
    g0 = [1.8 * x / std0 for x in (0.775, -0.425, 0.575, -0.925)]
    # group 1: nobody is correct: d = 0 -> f = 0, whatever the rewards
    # group 2: the shortest correct response has 90 tokens (<= 100): no bonus; mean 0.5, std sqrt(1/3)
    std2 = math.sqrt(1 / 3) + EPS
    g2 = [1.8 * x / std2 for x in (0.5, 0.5, -0.5, -0.5)]
    torch.testing.assert_close(
        got.shaped, torch.tensor([[1.7, 0.5, 1.5, 0.0], [0.5, 0.5, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    )
    torch.testing.assert_close(got.weights, torch.tensor([1.8, 0.0, 1.8]))
    torch.testing.assert_close(got.sequence, torch.tensor(g0 + [0.0] * 4 + g2), rtol=1e-5, atol=1e-6)
    plain = observe_advantages(
        rewards, correct, lengths, bonus_coef=0.0, difficulty_weighting=False, estimator="dr_grpo"
    )
    torch.testing.assert_close(
        plain.sequence[:4], torch.tensor([1.5, 0.5, 1.5, 0.0]) - 0.875
    )  # no bonus, f = 1


@pytest.mark.parametrize("seed", range(3))
def test_token_advantages_with_kl_match_a_python_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    b, t, coef = 5, 7, 0.3
    seq = torch.randn(b, generator=gen)
    kl = torch.rand(b, t, generator=gen)
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float()
    want = [[(seq[i] - coef * sum(kl[i, u] for u in range(j, int(lengths[i])))).item() if j < lengths[i] else 0.0
             for j in range(t)] for i in range(b)]  # fmt: skip
    torch.testing.assert_close(
        token_advantages(seq, mask, kl, coef), torch.tensor(want), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(token_advantages(seq, mask), seq[:, None] * mask)


# ------------------------------------------------------------------ dynamic sampling


def draw_of(rewards: list[list[float]], tag: str) -> Trajectory:
    """A scripted draw: groups of n = 2 responses with these rewards; sample ids say where each came from."""
    n, groups = 2, len(rewards)
    total = torch.tensor(rewards, dtype=torch.float32).flatten()
    rollout = Rollout(
        prompts=[None] * groups, prompt_index=[i // n for i in range(groups * n)],
        group_ids=list(range(groups * n)), completion_ids=torch.zeros(groups * n, 3, dtype=torch.long),
        completion_mask=torch.ones(groups * n, 3, dtype=torch.long), lengths=torch.full((groups * n,), 3),
        truncated=torch.zeros(groups * n, dtype=torch.bool), texts=[f"{tag}{i}" for i in range(groups * n)],
    )  # fmt: skip
    result = RewardResult(total, {"r": total}, total >= 1, {"reward/errors": 0.0, "reward/timeouts": 0.0})
    names = [f"{tag}{g}" for g in range(groups)]
    return Trajectory(names, list(range(groups)), [[]] * groups, rollout, result)


def refill_of(draws: list[Trajectory], tries: int = 3) -> Trajectory:
    cfg = load_config(None, ["algorithm.dynamic_sampling=true", f"algorithm.dynamic_sampling_max_tries={tries}",
                             "rollout.n=2", "rollout.prompts_per_step=3", "optim.mini_batch_size=6"])  # fmt: skip
    script = iter(draws)
    return rollout_and_reward(
        cfg, SimpleNamespace(num_processes=1), lambda step, attempt: next(script), 0, 3, 0
    )


def test_refill_keeps_varied_groups_in_draw_order():
    first = draw_of([[1, 0], [1, 1], [0, 1]], "a")  # groups a0, a2 varied; a1 zero variance
    second = draw_of([[0, 0], [1, 0], [0, 1]], "b")  # b1, b2 varied
    out = refill_of([first, second])
    assert out.samples == ["a0", "a2", "b1"] and out.tries == 2
    assert out.rollout.texts == ["a0", "a1", "a4", "a5", "b2", "b3"]
    assert out.rewards.total.tolist() == [1, 0, 0, 1, 1, 0]


def test_refill_tops_up_with_zero_variance_groups_after_the_last_try():
    draws = [draw_of([[1, 1], [0, 1], [0, 0]], "a"), draw_of([[0, 0], [1, 1], [1, 1]], "b")]
    out = refill_of(draws, tries=2)
    assert out.samples == ["a1", "a0", "a2"]  # the one varied group, then the first draw's others
    assert out.tries == 2 and len(out.rollout) == 6


def test_refill_stops_drawing_once_full():
    draws = [draw_of([[1, 0], [0, 1], [1, 0]], "a"), draw_of([[1, 0]] * 3, "b")]
    out = refill_of(draws)
    assert out.samples == ["a0", "a1", "a2"] and out.tries == 1
