"""Accuracy: does the content of `<answer>` match the gold answer? (spec section 3)

The gold decides how to compare, checked in this order:
  choice  a letter A-J, bare or as `(B)`, `B.`, `B)`   -> the prediction must name exactly that one option
  yesno   yes / no                                      -> the prediction's first word
  math    anything math-verify parses                   -> `verify(gold, prediction)`, gold parsed first
  text    anything else                                 -> normalised string equality, counted as
                                                           `unparsed_gold` so a bad gold column shows up
Letters are tested before math because math-verify reads `$E$` as Euler's number.

The original release's bugs, each covered by a test: an unparseable gold gave every response credit;
`E`, `F`, `Yes`, `(B)` golds were unparseable; multi-line answers were missed; `verify` got its
arguments swapped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from math_verify import parse, verify

log = logging.getLogger(__name__)
logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns when its own timeout is off; ours is on

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
TAG_RE = re.compile(r"</?(?:observe|think|answer)>")
CHOICE_GOLD_RE = re.compile(r"\(?([A-J])\)?[.):]?")
# A leading option label: "B", "(B)", "B.", "B)", "B:" followed by the end or a separator.
LEADING_CHOICE_RE = re.compile(r"\(?([A-J])\)?(?=$|[\s.):,;])[.):,;]?(.*)", re.S)
STANDALONE_LETTER_RE = re.compile(r"(?<![A-Za-z])\(?([A-J])\)?(?![A-Za-z])")
ANSWER_PREFIX_RE = re.compile(
    r"^(?:so,?\s*)?(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice)\s*(?:is|:)?\s*", re.I
)


class GradeTimeout(Exception):
    """Grading took longer than its time limit."""


@dataclass(frozen=True)
class Grade:
    score: float  # 1.0 or 0.0
    kind: str  # choice, yesno, math, text, or no_answer
    unparsed_gold: bool = False
    timed_out: bool = False


def extract_answer(completion: str, fallback: bool = False) -> str | None:
    """Content of the last `<answer>...</answer>` (may span lines); without tags, the whole completion
    (minus any tags) if `fallback`, else None."""
    found = ANSWER_RE.findall(completion)
    if found:
        return found[-1].strip()
    return TAG_RE.sub(" ", completion).strip() if fallback else None


def clean(text: str) -> str:
    """Strip the wrappers that carry no meaning: $...$, \\boxed{}, \\text{}, bold, a trailing period."""
    text = text.strip().replace("\u2212", "-")  # Unicode minus
    text = re.sub(r"\\boxed\s*{(.*)}", r"\1", text, flags=re.S)
    text = re.sub(r"\\(?:text|mathrm|textbf)\s*{([^{}]*)}", r"\1", text)
    text = text.replace("**", "").strip()
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$":
        text = text.strip("$").strip()
    return text.rstrip(".").strip()


def normalise_text(text: str) -> str:
    text = ANSWER_PREFIX_RE.sub("", clean(text).lower())
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


# ------------------------------------------------------------------ gold classification


@functools.lru_cache(maxsize=65536)
def classify_gold(gold: str) -> tuple[str, object]:
    """(kind, value): the parsed gold, cached because each gold is graded n times per group."""
    g = clean(gold)
    m = CHOICE_GOLD_RE.fullmatch(g)
    if m:
        return "choice", m.group(1)
    if normalise_text(g) in ("yes", "no"):
        return "yesno", normalise_text(g)
    parsed = parse(gold if "$" in gold or "\\" in gold else g, parsing_timeout=None)  # type: ignore[arg-type]
    if parsed and not isinstance(parsed[0], str):
        return "math", parsed
    return "text", normalise_text(g)


# ------------------------------------------------------------------ predictions


def choice_letter(prediction: str) -> str | None:
    """The single option a prediction names, or None if it names none or several."""
    text = ANSWER_PREFIX_RE.sub("", clean(prediction)).strip()
    m = LEADING_CHOICE_RE.fullmatch(text)
    if m and not _is_word(text, m.start(1), m.end(1)):
        letter, rest = m.group(1), m.group(2)
        others = {x for x in STANDALONE_LETTER_RE.findall(rest) if x != letter}
        return None if others else letter
    # "It is B": single letters, except the words "A" / "I" (followed by a lowercase word)
    letters = {
        mm.group(1)
        for mm in STANDALONE_LETTER_RE.finditer(text)
        if not _is_word(text, mm.start(1), mm.end(1))
    }
    return letters.pop() if len(letters) == 1 else None


def _is_word(text: str, start: int, end: int) -> bool:
    """Is the letter at text[start:end] the article "A" or the pronoun "I" rather than an option?
    ("A triangle", "I think"; but "A or B" names options.)"""
    return text[start:end] in ("A", "I") and re.match(r"\s+(?!(?:or|and|nor)\b)[a-z]", text[end:]) is not None


def yes_no(prediction: str) -> str | None:
    words = normalise_text(prediction).split()
    if not words or ("yes" in words and "no" in words):
        return None
    return words[0] if words[0] in ("yes", "no") else None


def grade(completion: str, gold: str, timeout_s: float = 5.0, fallback: bool = False) -> Grade:
    """Score one completion against its gold, within `timeout_s` seconds (a timeout scores 0)."""
    prediction = extract_answer(completion, fallback)
    try:
        with time_limit(timeout_s):
            kind, value = classify_gold(gold)
            if prediction is None or not prediction:
                return Grade(0.0, "no_answer", unparsed_gold=kind == "text")
            if kind == "choice":
                ok = choice_letter(prediction) == value
            elif kind == "yesno":
                ok = yes_no(prediction) == value
            elif kind == "math":
                predicted = parse(
                    clean(prediction) if "$" not in prediction else prediction, parsing_timeout=None
                )  # type: ignore[arg-type]
                ok = bool(predicted) and verify(value, predicted, timeout_seconds=None)  # gold first
            else:
                ok = normalise_text(prediction) == value
    except GradeTimeout:
        return Grade(0.0, "timeout", timed_out=True)
    return Grade(float(ok), kind, unparsed_gold=kind == "text")


def accuracy_reward(completion: str, answer: str, timeout_s: float = 5.0, fallback: bool = False) -> float:
    """1.0 if the `<answer>` content matches the gold `answer`, else 0.0."""
    return grade(completion, answer, timeout_s, fallback).score


# ------------------------------------------------------------------ time limit


_warned_thread = False


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise GradeTimeout after `seconds` (SIGALRM; the main thread only, elsewhere unbounded and said once).

    math-verify's own limit is whole seconds and returns "no match" on timeout without telling the caller,
    so we turn it off and use this one, which lets timeouts be counted."""
    global _warned_thread
    if seconds <= 0:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        if not _warned_thread:
            log.warning("grading outside the main thread runs without a time limit")
            _warned_thread = True
        yield
        return

    def on_alarm(signum, frame):
        raise GradeTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
