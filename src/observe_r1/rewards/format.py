"""Format rewards: does a completion have the required tag layout? (spec section 2)

`observe` (Observe-R1):   <observe> ... </observe> <think> ... </think> <answer> ... </answer>
  - each of the three tags opens and closes exactly once, in that order;
  - only whitespace before the first block, between blocks, and after </answer> (end-of-sequence
    tokens such as <|im_end|> may follow);
  - every block has non-whitespace content.
`observe_nested`: also accepts <observe> nested at the start of <think> (the original accepted it), with
  the same once-only rule.
`think`: the plain GRPO layout <think> ... </think> <answer> ... </answer>.
`think_empty_ok`: as `think`, but the thought may be empty (thought-dropout recipes such as TON).

Each returns 1.0 or 0.0; the weight (0.5 in the paper) is set in the config, not here.
"""

from __future__ import annotations

import re

TAGS = ("observe", "think", "answer")
END = r"(?:\s|<\|im_end\|>|<\|endoftext\|>|</s>)*"  # what may follow </answer>

_LAYOUTS = {
    "observe": (
        ("observe", "think", "answer"),
        rf"\s*<observe>(?P<observe>.*)</observe>\s*<think>(?P<think>.*)</think>\s*<answer>(?P<answer>.*)</answer>{END}",
        ("observe", "think", "answer"),
    ),
    "observe_nested": (
        ("observe", "think", "answer"),
        rf"\s*<think>\s*<observe>(?P<observe>.*)</observe>(?P<think>.*)</think>\s*<answer>(?P<answer>.*)</answer>{END}",
        ("observe", "think", "answer"),
    ),
    "think": (
        ("think", "answer"),
        rf"\s*<think>(?P<think>.*)</think>\s*<answer>(?P<answer>.*)</answer>{END}",
        ("think", "answer"),
    ),
    "think_empty_ok": (
        ("think", "answer"),
        rf"\s*<think>(?P<think>.*)</think>\s*<answer>(?P<answer>.*)</answer>{END}",
        ("answer",),
    ),
}
_COMPILED = {name: re.compile(pattern, re.S) for name, (_, pattern, _) in _LAYOUTS.items()}
LAYOUTS = tuple(_LAYOUTS)


def _tags_once(completion: str, tags: tuple[str, ...]) -> bool:
    """Each required tag opens and closes exactly once; tags of the other layouts do not appear."""
    return all(
        completion.count(f"<{t}>") == completion.count(f"</{t}>") == (1 if t in tags else 0) for t in TAGS
    )


def format_reward(completion: str, layout: str = "observe") -> float:
    """1.0 if `completion` has the `layout` exactly (see the module docstring), else 0.0."""
    if layout == "observe_nested":
        return max(_check(completion, "observe"), _check(completion, "observe_nested"))
    return _check(completion, layout)


def _check(completion: str, layout: str) -> float:
    if layout not in _LAYOUTS:
        raise ValueError(f"unknown format layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    tags, _, non_empty = _LAYOUTS[layout]
    if not _tags_once(completion, tags):
        return 0.0
    m = _COMPILED[layout].fullmatch(completion)
    return float(m is not None and all(m.group(g).strip() for g in non_empty))
