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
    # blocks that hold only invisible characters are empty too (issue 24): a zero-width space, a byte-order
    # mark, control characters, a word joiner, a Hangul filler
    ("<observe>\u200b</observe><think>b</think><answer>1</answer>", 0.0),
    ("<observe>a</observe><think>\ufeff</think><answer>1</answer>", 0.0),
    ("<observe>a</observe><think>b</think><answer>\x00\x07\x1b</answer>", 0.0),
    ("<observe>\u2060 \u200d</observe><think>b</think><answer>1</answer>", 0.0),
    ("<observe>\u3164</observe><think>b</think><answer>1</answer>", 0.0),
    ("<observe>a\u200b</observe><think>b</think><answer>1</answer>", 1.0),  # visible text with one inside
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


# ------------------------------------------------------------------ layouts as data

PARALLEL = "<think>split it <Parallel><Path>a</Path><Path>b</Path><Summary>both</Summary></Parallel> so</think><answer>1</answer>"


@pytest.mark.parametrize(
    "completion, expected",
    [
        (PARALLEL, 1.0),
        ("<think>no parallel block at all</think><answer>1</answer>", 1.0),  # Parallel*: zero is fine
        (
            PARALLEL.replace(
                "</Parallel> so",
                "</Parallel> <Parallel><Path>c</Path><Path>d</Path><Summary>e</Summary></Parallel>",
            ),
            1.0,
        ),
        (PARALLEL.replace("<Path>b</Path>", ""), 0.0),  # one path: Path{2,}
        (PARALLEL.replace("<Summary>both</Summary>", ""), 0.0),  # no summary
        (PARALLEL.replace("<Summary>both</Summary>", "<Summary>both</Summary><Summary>x</Summary>"), 0.0),
        (
            PARALLEL.replace(
                "<Path>a</Path><Path>b</Path><Summary>both</Summary>",
                "<Summary>s</Summary><Path>a</Path><Path>b</Path>",
            ),
            0.0,
        ),  # order
        (
            PARALLEL.replace("<Parallel><Path>a", "<Parallel>chatter <Path>a"),
            0.0,
        ),  # `=`: only blocks inside Parallel
        (PARALLEL.replace("<Path>a</Path>", "<Path>a</Parallel></Path>"), 0.0),  # crossed nesting
        (PARALLEL.replace("</Path><Path>b", "<Path>b"), 0.0),  # unclosed
        (
            PARALLEL.replace("<think>split it <Parallel>", "<think>split it </think><Parallel>"),
            0.0,
        ),  # outside think
        ("<Parallel><Path>a</Path><Path>b</Path><Summary>c</Summary></Parallel><answer>1</answer>", 0.0),
        (PARALLEL.replace("<Path>a</Path>", "<Path>  </Path>"), 0.0),  # an empty path
    ],
)
def test_parallel_r1_layout_with_a_stack_checker(completion, expected):
    assert format_reward(completion, "parallel") == expected


def test_layouts_from_the_grammar():
    from observe_r1.rewards.format import Block, parse_layout

    layout = parse_layout("plan", "think~ plan+ answer(^final)")
    assert layout.blocks == (
        Block("think", may_be_empty=True),
        Block("plan", low=1, high=None),
        Block("answer", children=(Block("final"),), first_child=True),
    )
    assert format_reward("<think></think><plan>a</plan><plan>b</plan><answer><final>1</final> ok</answer>", "plan",
                         "think~ plan+ answer(^final)") == 1.0  # fmt: skip
    assert (
        format_reward(
            "<think></think><answer><final>1</final> ok</answer>", "plan", "think~ plan+ answer(^final)"
        )
        == 0.0
    )
    for bad in ("think (answer", "think) answer", "think answer{x}", "think answer ()", "think & answer"):
        with pytest.raises(ValueError, match="format layout 'x'"):
            parse_layout("x", bad)
