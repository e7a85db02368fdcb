import pytest

from observe_r1.rewards.format import format_reward

GOOD = "<observe>a red circle</observe>\n<think>one circle</think>\n<answer>1</answer>"

OBSERVE_CASES = [
    (GOOD, 1.0),
    ("  \n" + GOOD + "\n  ", 1.0),
    (GOOD + "<|im_end|>", 1.0),
    (GOOD + "\n<|endoftext|><|endoftext|>", 1.0),
    ("<observe>\nmulti\nline\n</observe><think>\nsteps\n</think><answer>\n1\n</answer>", 1.0),
    # missing blocks
    ("<think>one circle</think>\n<answer>1</answer>", 0.0),
    ("<observe>a</observe>\n<answer>1</answer>", 0.0),
    ("<observe>a</observe>\n<think>b</think>", 0.0),
    ("", 0.0),
    # duplicated blocks
    ("<observe>a</observe><observe>b</observe><think>c</think><answer>1</answer>", 0.0),
    (GOOD + "<answer>2</answer>", 0.0),
    ("<observe>a</observe><think>b<think>c</think></think><answer>1</answer>", 0.0),
    # wrong order
    ("<think>b</think><observe>a</observe><answer>1</answer>", 0.0),
    ("<observe>a</observe><answer>1</answer><think>b</think>", 0.0),
    # empty or whitespace-only blocks
    ("<observe></observe><think>b</think><answer>1</answer>", 0.0),
    ("<observe>a</observe><think>  \n </think><answer>1</answer>", 0.0),
    ("<observe>a</observe><think>b</think><answer> </answer>", 0.0),
    # text outside the blocks
    ("Sure! " + GOOD, 0.0),
    ("<observe>a</observe> so <think>b</think><answer>1</answer>", 0.0),
    (GOOD + " Hope this helps.", 0.0),
    # unclosed / mismatched tags
    ("<observe>a<think>b</think><answer>1</answer>", 0.0),
    ("<observe>a</observe><think>b</think><answer>1", 0.0),
    # nested observe is not the default layout
    ("<think><observe>a</observe> b</think><answer>1</answer>", 0.0),
]


@pytest.mark.parametrize("completion, expected", OBSERVE_CASES)
def test_observe_layout(completion, expected):
    assert format_reward(completion) == expected


def test_table_is_big_enough():
    assert len(OBSERVE_CASES) >= 15


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think><observe>a</observe> b</think><answer>1</answer>", 1.0),
        (GOOD, 1.0),
        ("<think><observe>a</observe></think><answer>1</answer>", 0.0),  # thought empty after observe
        ("<think><observe>a</observe><observe>c</observe> b</think><answer>1</answer>", 0.0),  # once-only
        ("<observe>x</observe><think><observe>a</observe> b</think><answer>1</answer>", 0.0),
    ],
)
def test_observe_nested_layout(completion, expected):
    assert format_reward(completion, "observe_nested") == expected


@pytest.mark.parametrize(
    "completion, think, empty_ok",
    [
        ("<think>b</think><answer>1</answer>", 1.0, 1.0),
        ("<think>\n\n</think>\n<answer>1</answer>", 0.0, 1.0),  # thought dropout
        ("<think>b</think><answer> </answer>", 0.0, 0.0),
        (GOOD, 0.0, 0.0),  # an observe block is not part of this layout
        ("<answer>1</answer>", 0.0, 0.0),
        ("<think>b</think><answer>1</answer> extra", 0.0, 0.0),
    ],
)
def test_think_layouts(completion, think, empty_ok):
    assert format_reward(completion, "think") == think
    assert format_reward(completion, "think_empty_ok") == empty_ok


def test_unknown_layout():
    with pytest.raises(ValueError, match="unknown format layout"):
        format_reward(GOOD, "xml")
