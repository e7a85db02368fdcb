"""Preference rows (TRL's preference layouts) for reward-model training: a prompt, a `chosen` and a `rejected`
response.

  explicit   `prompt` (a string or a chat list, images as in the `trl` row layout) with `chosen` / `rejected`
             as strings or as chat lists of one assistant message
  implicit   `chosen` / `rejected` only, each the whole text or the whole chat: the prompt is their longest
             common prefix (TRL's `extract_prompt`), the responses what follows it
A row is rewritten into the explicit layout with string responses before it is parsed like any other
(`observe_r1.data.dataset.parse_row`); a preference row needs no gold answer.
"""

from __future__ import annotations

from typing import Any

from observe_r1.data.sources import RowError

BAD_PAIR = "bad_preference_pair"  # a data check kind: responses that are not text / one assistant message
PROMPT_COLUMNS = ("messages", "message", "prompt", "problem")


def is_preference(row: dict) -> bool:
    return "chosen" in row and "rejected" in row


def explicit(row: dict) -> dict:
    """The row with a prompt and string `chosen` / `rejected` responses (see the module docstring)."""
    chosen, rejected = row["chosen"], row["rejected"]
    if not any(k in row for k in PROMPT_COLUMNS):
        if type(chosen) is not type(rejected) or not isinstance(chosen, str | list):
            raise RowError(
                BAD_PAIR, "implicit-prompt `chosen` and `rejected` must both be strings or chat lists"
            )
        cut = common_prefix(chosen, rejected)
        if cut == 0:
            raise RowError(BAD_PAIR, "`chosen` and `rejected` share no prompt (no `prompt` column either)")
        row = {**row, "prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}
    chosen, rejected = response_text(row["chosen"], "chosen"), response_text(row["rejected"], "rejected")
    return {**row, "chosen": chosen, "rejected": rejected}


def common_prefix(a: str | list, b: str | list) -> int:
    """The length of the longest common prefix of two strings (characters, ending before a space that starts
    the responses, as TRL cuts) or two chat lists (whole messages)."""
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    if isinstance(a, str) and n and a[n - 1] == " ":
        n -= 1
    return n


def response_text(value: Any, column: str) -> str:
    """A response as text: a string, or a chat list of one assistant message (string content or text parts)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        message = value[0]
        if message.get("role") != "assistant":
            raise RowError(
                BAD_PAIR, f"`{column}`: its message must be the assistant's, got {message.get('role')!r}"
            )
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        if not all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts
        ):
            raise RowError(BAD_PAIR, f"`{column}`: the assistant's message must be text")
        text = "".join(str(p["text"]) for p in parts)
    else:
        got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise RowError(BAD_PAIR, f"`{column}` must be a string or a list of one assistant message, got {got}")
    if not text.strip():
        raise RowError(BAD_PAIR, f"`{column}` is empty")
    return text
