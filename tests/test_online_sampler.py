from collections import Counter

import pytest

from observe_r1.data.sampler import OnlineSampler, make_sampler


def test_new_items_follow_the_ladder_and_the_new_share():
    s = OnlineSampler(20, seed=0, new_share=0.5)
    first = s.next(4)
    assert first == [0, 1, 2, 3]  # nothing reached yet: all new
    second = s.next(4)
    assert second[:2] == [4, 5] and set(second[2:]) <= {0, 1, 2, 3}
    assert s.frontier == 6


def test_revisits_prefer_pass_rates_near_one_half():
    s = OnlineSampler(40, seed=1, new_share=0.25)
    s.next(40)  # reach everything
    rates = [1.0] * 40
    rates[7], rates[13] = 0.5, 0.0
    for _ in range(12):  # the running estimates converge to these rates
        s.update(list(range(40)), rates)
    picks = Counter(i for _ in range(300) for i in s.next(4))
    assert picks[7] == max(picks.values())
    assert picks[7] > 5 * picks[13] and picks[7] > 5 * picks[0]


def test_pass_rate_is_an_ema_started_from_the_prior():
    s = OnlineSampler(3, prior=[0.25, 0.5, 1.0], ema=0.5)
    s.update([0, 0], [1.0, 1.0])
    assert s.pass_rate.tolist() == pytest.approx([0.8125, 0.5, 1.0]) and s.seen.tolist() == [2, 0, 0]


def test_state_survives_a_round_trip():
    a = OnlineSampler(30, seed=2)
    for _ in range(5):
        a.update(a.next(6), [0.5, 0.0, 1.0, 0.25, 0.75, 0.5])
    b = OnlineSampler(30, seed=99)
    b.load_state_dict(a.state_dict())
    assert [a.next(6) for _ in range(5)] == [b.next(6) for _ in range(5)]
    with pytest.raises(ValueError, match="data or data.sampler changed"):
        OnlineSampler(31).load_state_dict(a.state_dict())


def test_factory():
    assert isinstance(make_sampler("online", 5, 0), OnlineSampler)
    assert make_sampler("sequential", 5, 0).next(2) == [0, 1]
