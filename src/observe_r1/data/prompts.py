"""System prompts that ask for the output layouts the format rewards check.

The original Observe-R1 wording was not published (spec section 2); these say the same thing plainly.
`data.system_prompt` in the config is one of these preset names or a literal prompt.
"""

from __future__ import annotations

OBSERVE = (
    "You are a careful visual reasoner. First describe what you see in the image inside "
    "<observe> </observe>: the objects, numbers, text and relations that matter for the question. "
    "Then reason step by step inside <think> </think>. Finally give only the final answer inside "
    "<answer> </answer>. For multiple-choice questions answer with the option letter."
)

THINK = (
    "You are a careful reasoner. Reason step by step inside <think> </think>, then give only the final "
    "answer inside <answer> </answer>. For multiple-choice questions answer with the option letter."
)

THINK_CODE = (
    "You are a careful reasoner. Reason step by step inside <think> </think>. You can run Python: write code "
    "inside <code> </code> and what it prints appears inside <output> </output>. Finally give only the final "
    "answer inside <answer> </answer>."
)

DIRECT = "Answer with only the final answer inside <answer> </answer>, without any reasoning."

PRESETS = {"observe": OBSERVE, "think": THINK, "think_code": THINK_CODE, "direct": DIRECT, "none": ""}


def system_prompt(name_or_text: str) -> str:
    """A preset name (observe, think, think_code, direct, none) or the literal text itself."""
    return PRESETS.get(name_or_text, name_or_text)


def with_system_prompt(messages: list[dict], prompt: str) -> list[dict]:
    """Prepend a system message unless the sample already has one (the data's own prompt wins)."""
    if not prompt or (messages and messages[0].get("role") == "system"):
        return messages
    return [{"role": "system", "content": prompt}, *messages]
