from observe_r1.data.dataset import Sample
from observe_r1.data.transforms import (
    EMPTY_THOUGHT,
    difficulty_cue,
    drop_thought,
    stable_coin,
    transform_responses,
    with_difficulty_cue,
)
from observe_r1.rewards.format import format_reward

RESPONSE = "<observe>two red squares</observe><think>count: 1, 2</think><answer>2</answer>"


def test_thought_dropout_empties_the_thought_only():
    assert drop_thought(RESPONSE) == f"<observe>two red squares</observe>{EMPTY_THOUGHT}<answer>2</answer>"
    assert drop_thought("<answer>2</answer>") == "<answer>2</answer>"
    plain = "<think>a</think><answer>2</answer>"
    assert (
        format_reward(drop_thought(plain), "think") == 0.0
        and format_reward(drop_thought(plain), "think_empty_ok") == 1.0
    )


def test_the_dropout_coin_is_stable_and_has_its_rate():
    draws = [stable_coin(0, f"id-{i}", 0.5) for i in range(4000)]
    assert draws == [stable_coin(0, f"id-{i}", 0.5) for i in range(4000)]
    assert 0.47 < sum(draws) / len(draws) < 0.53
    assert draws != [stable_coin(1, f"id-{i}", 0.5) for i in range(4000)]


def test_difficulty_cues_and_the_cued_layout():
    assert [difficulty_cue(d) for d in (0.0, 0.2, 0.34, 0.66, 0.67, 1.0)] == [
        "easy",
        "easy",
        "medium",
        "medium",
        "hard",
        "hard",
    ]
    cued = with_difficulty_cue("<think>a</think><answer>2</answer>", 0.9)
    assert cued.startswith("<difficulty>hard</difficulty><think>") and format_reward(cued, "cued") == 1.0
    assert format_reward("<think>a</think><answer>2</answer>", "cued") == 0.0


def test_transform_responses_on_samples():
    samples = [Sample(f"s{i}", [{"role": "user", "content": "q"}], [], "2", {"solution": RESPONSE, "difficulty": i / 10})
               for i in range(10)]  # fmt: skip
    out = transform_responses(samples, "solution", thought_dropout=1.0, cue=True)
    assert out[0].metadata["solution"] == f"<difficulty>easy</difficulty>{drop_thought(RESPONSE)}"
    assert out[9].metadata["solution"].startswith("<difficulty>hard</difficulty>")
    assert samples[0].metadata["solution"] == RESPONSE  # the input is not changed
    assert transform_responses(samples, "solution") == samples
    import pytest

    bare = [Sample("x", [{"role": "user", "content": "q"}], [], "2", {"solution": RESPONSE})]
    with pytest.raises(ValueError, match="difficulty"):
        transform_responses(bare, "solution", cue=True)


def test_sketch_by_rules_recovers_the_concise_reference_from_its_long_form():
    import random

    from observe_r1.data.transforms import sketch_thought
    from observe_r1.toy.sketch import long_form
    from observe_r1.toy.synth import make_sample

    for seed in range(100):
        reference = make_sample(random.Random(seed), (1, 2, 3, 4, 5, 6)).reference()
        assert sketch_thought(long_form(reference, random.Random(seed))) == reference
        assert sketch_thought(reference) == reference  # a sketch stays as it is
    assert sketch_thought("<answer>3</answer>") == "<answer>3</answer>"
    only_talk = "<think>\nHmm, let me think. Wait.\n</think><answer>3</answer>"
    assert sketch_thought(only_talk) == only_talk  # nothing would be left: kept whole
