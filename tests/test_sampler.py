import pytest

from observe_r1.data.sampler import PromptSampler


def test_sequential_is_file_order_across_epochs():
    s = PromptSampler(5, "sequential")
    assert s.next(3) == [0, 1, 2] and s.next(4) == [3, 4, 0, 1] and s.epoch == 1


def test_shuffled_is_a_seeded_permutation_per_epoch():
    a, b = PromptSampler(10, "shuffled", seed=1), PromptSampler(10, "shuffled", seed=1)
    first = a.next(10)
    assert sorted(first) == list(range(10)) and first == b.next(10)
    assert a.next(10) != first  # a new permutation for epoch 1
    assert PromptSampler(10, "shuffled", seed=2).next(10) != first


@pytest.mark.parametrize("mode", ["sequential", "shuffled"])
def test_state_round_trip_continues_exactly(mode):
    a = PromptSampler(7, mode, seed=3)
    a.next(9)
    b = PromptSampler(7, mode, seed=3)
    b.load_state_dict(a.state_dict())
    assert a.next(12) == b.next(12)


def test_state_from_other_data_is_refused():
    s = PromptSampler(7, "shuffled")
    with pytest.raises(ValueError, match="data or data.sampler changed"):
        PromptSampler(8, "shuffled").load_state_dict(s.state_dict())
