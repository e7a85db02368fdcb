import pytest
import torch

from observe_r1.algos import apply_length_bonus


def naive_bonus(rewards, correct, lengths, coef, min_length):
    out = [row[:] for row in rewards]
    for g in range(len(rewards)):
        best = None
        for i in range(len(rewards[g])):
            if correct[g][i] and (best is None or lengths[g][i] < lengths[g][best]):
                best = i
        if best is not None and lengths[g][best] > min_length:
            out[g][best] += coef
    return out


@pytest.mark.parametrize("seed", range(20))
def test_matches_a_python_loop_on_random_groups(seed):
    gen = torch.Generator().manual_seed(seed)
    groups, n = 16, 8
    correct = torch.rand(groups, n, generator=gen) < 0.4
    lengths = torch.randint(50, 160, (groups, n), generator=gen)  # ties happen
    rewards = correct.float() + 0.5 * (torch.rand(groups, n, generator=gen) < 0.7).float()
    got = apply_length_bonus(rewards, correct, lengths, coef=0.2, min_length=100)
    want = naive_bonus(rewards.tolist(), correct.tolist(), lengths.tolist(), 0.2, 100)
    torch.testing.assert_close(got, torch.tensor(want))


def T(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def test_shortest_correct_gets_the_bonus():
    r = apply_length_bonus(T([[1.5, 1.5, 0.5]]), T([[1, 1, 0]], torch.bool), T([[300, 150, 120]], torch.long))
    torch.testing.assert_close(r, T([[1.5, 1.7, 0.5]]))


def test_not_passed_on_when_the_shortest_correct_is_too_short():
    r = apply_length_bonus(T([[1.0, 1.0]]), T([[1, 1]], torch.bool), T([[100, 400]], torch.long))
    torch.testing.assert_close(r, T([[1.0, 1.0]]))  # 100 is not > 100, and 400 does not inherit it


def test_ties_go_to_the_lowest_index():
    r = apply_length_bonus(T([[1.0, 1.0, 1.0]]), T([[0, 1, 1]], torch.bool), T([[90, 200, 200]], torch.long))
    torch.testing.assert_close(r, T([[1.0, 1.2, 1.0]]))


def test_group_without_correct_response_is_unchanged():
    rewards = T([[0.5, 0.0, 0.5]])
    r = apply_length_bonus(rewards, T([[0, 0, 0]], torch.bool), T([[500, 600, 700]], torch.long))
    torch.testing.assert_close(r, rewards)  # the original gave index 0 the bonus here


def test_wrong_shorter_responses_do_not_count_and_inputs_are_untouched():
    rewards = T([[0.0, 1.0], [1.0, 1.0]])
    before = rewards.clone()
    r = apply_length_bonus(
        rewards, T([[0, 1], [1, 1]], torch.bool), T([[10, 200], [101, 102]], torch.long), coef=0.3
    )
    torch.testing.assert_close(r, T([[0.0, 1.3], [1.3, 1.0]]))
    torch.testing.assert_close(rewards, before)
