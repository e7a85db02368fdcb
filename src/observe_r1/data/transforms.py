"""Transforms of the reference responses a supervised stage trains on (`sft.*`, docs/recipes.md). Pure
functions of text; `transform_responses` applies them to samples, deterministically per sample and seed.

  thought dropout (TON, "Think or Not"): with probability p the thought becomes empty, `<think>\\n\\n</think>`,
      so the model learns that it may answer directly (its GRPO stage then uses `think_empty_ok`).
  format corruption (Metis-SPECS): the rejected response of a preference pair is a correct response with its
      format broken, its tags removed or renamed.
  difficulty cue (Think-How-to-Think): the response starts with `<difficulty>easy|medium|hard</difficulty>`
      from the row's ladder difficulty, so the model learns to state how hard an item is before thinking
      (short traces for easy items and long ones for hard come from the data; the `cued` layout checks it).
  sketch (SketchThinker-R1, by rules): the thought keeps its reasoning and loses its self-talk (hedges,
      re-checks, "let me ..."), its restatements of what the `<observe>` block already says, and repeats.
      (The other path, a model that rewrites, is `sft.sketch: judge`: observe_r1.recipes.sft.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence

from observe_r1.data.dataset import Sample

THINK_RE = re.compile(r"<think>.*?</think>", re.S)
EMPTY_THOUGHT = "<think>\n\n</think>"
CUES = ((1 / 3, "easy"), (2 / 3, "medium"), (float("inf"), "hard"))  # difficulty below the bound -> the cue


def drop_thought(response: str) -> str:
    """The response with its (first) thought emptied; unchanged when it has none."""
    return THINK_RE.sub(lambda _: EMPTY_THOUGHT, response, count=1)


TAG_RE = re.compile(r"<(/?)(observe|think|answer)>")
RENAMED = {"observe": "look", "think": "reason", "answer": "result"}


def corrupt_format(response: str, rename: bool) -> str:
    """The same response with its format broken: the tags renamed (<think> -> <reason>, ...) or removed."""
    if rename:
        return TAG_RE.sub(lambda m: f"<{m.group(1)}{RENAMED[m.group(2)]}>", response)
    return " ".join(TAG_RE.sub(" ", response).split())


SENTENCE_RE = re.compile(r"(?<=[.!?])\s+|\n+")
SELF_TALK_RE = re.compile(
    r"^(wait|hmm+|okay|ok|alright|let me|let's|so after|hold on|actually,? let me|i am (fairly |quite )?"
    r"(sure|confident)|i think i|is that right|to be (sure|safe)|double-check|(yes|right|correct)[.!]?$)",
    re.I,
)
SEEN_RE = re.compile(r"^(i can see|i see|there is|there's)\s+", re.I)
OBSERVE_BLOCK_RE = re.compile(r"<observe>(.*?)</observe>", re.S)


def sketch_thought(response: str) -> str:
    """The response with its (first) thought sketched by rules (see the module docstring); a thought that
    would lose every sentence is kept as it was."""
    found = re.search(r"<think>(.*?)</think>", response, re.S)
    if found is None:
        return response
    observed = OBSERVE_BLOCK_RE.search(response)
    facts = {
        line.strip().rstrip(".").lower() for line in (observed.group(1) if observed else "").splitlines()
    }
    kept: list[str] = []
    for sentence in (x.strip() for x in SENTENCE_RE.split(found.group(1))):
        plain = SEEN_RE.sub("", sentence).rstrip(".,").lower()
        if sentence and not SELF_TALK_RE.match(sentence) and plain not in facts and sentence not in kept:
            kept.append(sentence)
    if not kept:
        return response
    return response[: found.start(1)] + "\n" + " ".join(kept) + "\n" + response[found.end(1) :]


def difficulty_cue(difficulty: float) -> str:
    return next(name for bound, name in CUES if difficulty < bound)


def with_difficulty_cue(response: str, difficulty: float) -> str:
    return f"<difficulty>{difficulty_cue(difficulty)}</difficulty>{response}"


def stable_coin(seed: int, key: str, p: float) -> bool:
    """A stable coin with probability p per (seed, key): the same samples are dropped in every epoch and run."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < p


def transform_responses(
    samples: Sequence[Sample],
    column: str,
    thought_dropout: float = 0.0,
    cue: bool = False,
    seed: int = 0,
    sketch: bool = False,
) -> list[Sample]:
    """The samples with their reference responses (`column`) transformed; rows without a ladder difficulty
    get no cue (a ValueError when `cue` is on and none has one)."""
    if cue and not any(isinstance(s.metadata.get("difficulty"), int | float) for s in samples):
        raise ValueError(
            "sft.difficulty_cue needs a `difficulty` column (a NeuraLadder file: observe-r1 ladder build)"
        )
    out = []
    for s in samples:
        response = s.metadata[column]
        if sketch:
            response = sketch_thought(response)
        if thought_dropout and stable_coin(seed, s.id, thought_dropout):
            response = drop_thought(response)
        difficulty = s.metadata.get("difficulty")
        if cue and isinstance(difficulty, int | float):
            response = with_difficulty_cue(response, float(difficulty))
        out.append(dataclasses.replace(s, metadata={**s.metadata, column: response}))
    return out
