"""Accuracy: does the content of `<answer>` match the gold answer? (spec section 3)

The gold decides how to compare, checked in this order:
  choice  a letter A-J, bare or as `(B)`, `B.`, `B)`, or an option with its text (`(D) Alina`, a last line
          `C Cecile`)                               -> the prediction must name exactly that one option
  yesno   yes / no                                  -> the prediction's first word
  math    anything math-verify reads completely     -> `verify(gold, prediction)`, gold parsed first
  text    anything else                             -> string equality after SQuAD's normalisation
                                                       (case, punctuation, articles), counted as
                                                       `unparsed_gold` so a bad gold column shows up
Letters are tested before math because math-verify reads `$E$` as Euler's number.

math-verify gets what it needs (verl and lmm-r1 do the same): LaTeX without delimiters (`2 \\sqrt { 221 }`,
the geometry3k form) is wrapped in `$...$`, since its expression reader would take the `2` alone; text that
has a LaTeX span or a `\\boxed{}` goes to it untouched. A plain gold is math only if the
reading keeps all of its digits (`(1, 2)` is not `2`, `12 apples and 3 pears` is not `3`): a misread gold
must never make a wrong answer right. The peers' own test verdicts and where we differ on purpose:
docs/rewards.md.
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
from decimal import Decimal
from typing import Any

from math_verify import LatexExtractionConfig, parse, verify

from observe_r1.rewards.bounds import unbounded

log = logging.getLogger(__name__)
logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns when its own timeout is off; ours is on

TAG_RE = re.compile(r"</?(?:observe|think|answer)>")
CHOICE_GOLD_RE = re.compile(r"\(?([A-J])\)?[.):]?")
# A gold that is an option with its text: "(D) Alina", "D. Alina", "D) Alina", "C Cecile" (a capital after
# a bare letter, so that "A cat" stays text); the last such line of the gold counts.
OPTION_GOLD_RE = re.compile(r"^\s*(?:\(([A-J])\)|([A-J])[.):]|([A-J])(?=\s+[A-Z0-9]))\s*(.+?)\s*$", re.M)
# A leading option label: "B", "(B)", "B.", "B)", "B:" followed by the end or a separator.
LEADING_CHOICE_RE = re.compile(r"\(?([A-J])\)?(?=$|[\s.):,;/])[.):,;]?(.*)", re.S)
STANDALONE_LETTER_RE = re.compile(r"(?<![A-Za-z'])\(?([A-J])\)?(?![A-Za-z'])")  # not "I'm", "don't"
# Options joined into a list ("A or B", "A/B/C", "A, B", "(A) (B)"): the letters right after a leading one.
OPTION_LIST_RE = re.compile(r"(?:\s*(?:[/,;&+]|\b(?:or|and|nor)\b)?\s*\(?([A-J])\)?(?![A-Za-z']))*")
# An answer label; the text after the rightmost one that names an option is the answer ("Answer: A ...
# Final Answer: B" is B). Markdown around it ("**Answer:**", "__Answer__:") is allowed.
LABEL_RE = re.compile(
    r"(?:[*_]{0,2})\b(?:final\s+|correct\s+)?answer(?:[*_]{0,2})\s*(?:is\b|:)\s*(?:[*_]{0,2})", re.I
)
ANSWER_PREFIX_RE = re.compile(
    r"^(?:so,?\s*)?(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice)\s*(?:is|:)?\s*", re.I
)
HEDGE_RE = re.compile(r"\b(?:maybe|might|perhaps|possibly|not sure|unsure|guess)\b", re.I)
# what rules out the option just named: "B is wrong", "B is not correct", "B isn't", "B: incorrect"
NEGATED_RE = re.compile(
    r"[\s:,-]*(?:(?:is|was|seems|looks)\s+)?(?:not\b|isn't|wasn't|wrong|incorrect|false|eliminated|ruled out)",
    re.I,
)
NEGATION_RE = re.compile(r"\b(?:not|no|never)\b|n't", re.I)
ARTICLES_RE = re.compile(r"\b(?:a|an|the)\b")
# Where math-verify must read LaTeX: a $...$ / \(...\) / \[...\] span or a \boxed{}.
LATEX_SPAN_RE = re.compile(r"\$[^$]+\$|\\\(|\\\[|\\boxed\s*{", re.S)
LATEX = (LatexExtractionConfig(),)
BOXED_RE = re.compile(r"\\boxed\s*{((?:[^{}]|{[^{}]*})*)}")  # one level of nested braces: \boxed{\frac{1}{2}}
SCIENTIFIC_RE = re.compile(r"[-+]?\d+(?:\.\d+)?[eE]([-+]?\d+)")
MAX_SCIENTIFIC_EXPONENT = 300  # 1e400 stays as written (and is then not read as math)
MIXED_RE = re.compile(r"(-?)(\d+)\s+(\d+)/(\d+)")  # 3 1/2
FINAL_LINE_WORDS = 3  # answer_fallback: a last line this short is the answer ("4", "B", "x = 4")
MAX_ANSWER_CHARS = 10_000  # a longer <answer> scores 0 (no gold is that long; it bounds the readers' work)
FILLER_WORDS = {
    "the",
    "a",
    "an",
    "is",
    "are",
    "was",
    "of",
    "in",
    "and",
    "or",
    "to",
    "for",
    "so",
    "thus",
    "it",
    "answer",
    "final",
    "total",
    "about",
    "approximately",
    "exactly",
    "only",
    "each",
    "all",
}
# one name per unit, for the units rule (`math_matches`); plurals lose their s first
UNIT_NAMES = {
    "centimeter": "cm", "centimetre": "cm", "millimeter": "mm", "millimetre": "mm", "meter": "m", "metre": "m",
    "kilometer": "km", "kilometre": "km", "inche": "in", "inch": "in", "foot": "ft", "feet": "ft", "yard": "yd",
    "mile": "mi", "gram": "g", "kilogram": "kg", "kgs": "kg", "pound": "lb", "lbs": "lb", "second": "s",
    "sec": "s", "minute": "min", "hour": "h", "hr": "h", "day": "d", "degree": "deg", "liter": "l", "litre": "l",
    "milliliter": "ml", "millilitre": "ml", "dollar": "usd",
}  # fmt: skip
WRAPPER_RE = re.compile(r"\\(?:boxed|text|mathrm|textbf)\s*{([^{}]*)}")


class GradeTimeout(BaseException):
    """Grading took longer than its time limit. A BaseException: math-verify and sympy catch every
    `Exception` (a timeout they swallowed once went uncounted, left the rest of the grading unbounded, and
    cached the gold it interrupted as plain text for the rest of the process)."""


@dataclass(frozen=True)
class Grade:
    score: float  # 1.0 or 0.0
    kind: str  # choice, yesno, math, text, or no_answer
    unparsed_gold: bool = False
    timed_out: bool = False


def extract_answer(completion: str, fallback: bool = False) -> str | None:
    """Content of the last `<answer>...</answer>` (may span lines) that is not inside a `<think>` or
    `<observe>` block (an answer written while reasoning is not the answer); without one, None, or with
    `fallback` the one final answer the completion states (`final_answer`). Linear in the length: a
    completion of thousands of unclosed tags costs what its length costs."""
    end = completion.rfind("</answer>")
    start = completion.rfind("<answer>", 0, end) if end >= 0 else -1
    if start < 0:
        return final_answer(completion) if fallback else None
    before = completion[:start]
    if any(before.count(f"<{tag}>") > before.count(f"</{tag}>") for tag in ("think", "observe")):
        return None
    return completion[start + len("<answer>") : end].strip()


def final_answer(completion: str) -> str | None:
    """One final answer of an untagged completion, never the whole text (whose every number would be
    tried: "There are 5 circles, not 4." must not match 4): the last `\\boxed{}`, else the rest of the line
    after the last answer label ("The answer is 3", "Final answer: B"), else a last line of at most
    FINAL_LINE_WORDS words; otherwise None."""
    text = TAG_RE.sub("\n", completion)
    boxed = BOXED_RE.findall(text)
    if boxed:
        return boxed[-1].strip()
    labels = list(LABEL_RE.finditer(text))
    if labels:
        rest = text[labels[-1].end() :].split("\n", 1)[0].strip()
        return rest or None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines and len(lines[-1].split()) <= FINAL_LINE_WORDS else None


def clean(text: str) -> str:
    """Strip the wrappers that carry no meaning: $...$, \\boxed{}, \\text{}, bold, a trailing period."""
    text = text.strip().replace("\u2212", "-")  # Unicode minus
    unwrapped = None
    while unwrapped != text:  # innermost first: \boxed{\text{B}}
        unwrapped, text = text, WRAPPER_RE.sub(r"\1", text)
    text = text.replace("**", "").replace("__", "").strip()
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$":
        text = text.strip("$").strip()
    return text.rstrip(".").strip()


def normalise_text(text: str) -> str:
    """SQuAD / HotpotQA normalisation: lower case, no answer prefix, punctuation or articles."""
    text = ANSWER_PREFIX_RE.sub("", clean(text).lower())
    text = ARTICLES_RE.sub(" ", re.sub(r"[^\w\s]", " ", text))
    return " ".join(text.split())


# ------------------------------------------------------------------ math


def read_math(text: str, whole: bool = False) -> list:
    """math-verify's reading of `text`, given what it needs (see the module docstring); [] if none, or if
    evaluating it could run without bound (`bounds.unbounded`).

    `whole`: the reading must keep every digit of a plain text (for golds), else []."""
    text = plain_number(text.strip().replace("\u2212", "-"))
    if unbounded(text):
        return []
    if LATEX_SPAN_RE.search(text):
        return parse(text, parsing_timeout=None)  # type: ignore[arg-type]
    if "\\" in text:  # bare LaTeX: "2 \sqrt { 221 }", "\dfrac{7}{2}"
        text = re.sub(r"\s*([{}])\s*", r"\1", text)
        return parse(f"${text}$", parsing_timeout=None)  # type: ignore[arg-type]
    parsed = parse(text, parsing_timeout=None)  # type: ignore[arg-type]
    if parsed and _digits(parsed[-1]) == _digits(text):
        return parsed
    if not re.search(r"[A-Za-z]{2}", text):  # symbols, not words: "(1, 2)", "3:4"
        wrapped = parse(f"${text}$", extraction_config=LATEX, parsing_timeout=None)  # type: ignore[arg-type]
        if wrapped and _digits(wrapped[-1]) == _digits(text):
            return wrapped
    return [] if whole else parsed


def plain_number(text: str) -> str:
    """Scientific notation and mixed numbers, which math-verify misreads (`1e5` as 1, `3 1/2` as 1), as
    plain numbers: `1e+20` (a float column written out) -> 100000000000000000000, `3 1/2` -> 7/2."""
    sci = SCIENTIFIC_RE.fullmatch(text)
    if sci and abs(int(sci.group(1))) <= MAX_SCIENTIFIC_EXPONENT:
        return format(Decimal(text), "f")
    mixed = MIXED_RE.fullmatch(text)
    if mixed:
        sign, whole, num, den = mixed.groups()
        return f"{sign}{int(whole) * int(den) + int(num)}/{den}"
    return text


def _digits(text: object) -> str:
    return re.sub(r"\D", "", str(text))


# ------------------------------------------------------------------ gold classification


@functools.lru_cache(maxsize=65536)
def classify_gold(gold: str) -> tuple[str, Any]:
    """(kind, value): the parsed gold, cached because each gold is graded n times per group.

    choice -> (letter, option text or None); yesno -> "yes"/"no"; math -> math-verify's reading;
    text -> the normalised string."""
    g = clean(gold)
    m = CHOICE_GOLD_RE.fullmatch(g)
    if m:
        return "choice", (m.group(1), None)
    options = OPTION_GOLD_RE.findall(gold)
    if options:
        *letters, text = options[-1]
        return "choice", ("".join(letters), normalise_text(text))
    if normalise_text(g) in ("yes", "no"):
        return "yesno", normalise_text(g)
    parsed = read_math(gold, whole=True)
    if parsed and not isinstance(parsed[0], str):
        return "math", parsed
    return "text", normalise_text(g)


# ------------------------------------------------------------------ predictions


def choice_letter(prediction: str) -> str | None:
    """The single option a prediction names, or None if it names none or several.

    After answer labels, the rightmost label that names one option wins ("Answer: A ... Final Answer: B");
    otherwise the whole prediction is read."""
    text = clean(prediction)
    segments = LABEL_RE.split(text)
    for segment in reversed(segments[1:]):
        letter = _letter_in(segment, labelled=True)
        if letter:
            return letter
    return _letter_in(ANSWER_PREFIX_RE.sub("", text).strip(), labelled=False)


def _letter_in(text: str, labelled: bool) -> str | None:
    text = text.strip().strip("*_").strip()
    if labelled and re.fullmatch(r"\(?([a-j])\)?\.?", text):  # "Answer: c"
        return text.strip("().").upper()
    m = LEADING_CHOICE_RE.fullmatch(text)
    if m and not _is_word(text, m.start(1), m.end(1)) and NEGATED_RE.match(m.group(2)):
        # "B is wrong; C": the letter is ruled out, the answer is what follows the clause
        rest = re.split(r"[,.;:\n]", m.group(2), maxsplit=1)
        return _letter_in(rest[1], labelled) if len(rest) > 1 else None
    if m and not _is_word(text, m.start(1), m.end(1)):
        # "D. it can't be A or B" names D; "A or B", "A/B/C", "A, B" name several
        listed = OPTION_LIST_RE.match(text, m.end(1))
        letters = {m.group(1), *re.findall(r"[A-J]", listed.group(0) if listed else "")}
        return m.group(1) if len(letters) == 1 else None
    letters = _standalone(text)
    if not labelled and HEDGE_RE.search(text):  # "it might be B but I'm not sure" is not an answer
        return None
    if labelled and len(letters) > 1:
        # "for sure D, it can't be A or B": the first clause after the label, unless it negates
        clause = re.split(r"[,.;\n]", text, maxsplit=1)[0]
        if not NEGATION_RE.search(clause) and len(_standalone(clause)) == 1:
            return _standalone(clause).pop()
    return letters.pop() if len(letters) == 1 else None


def _standalone(text: str) -> set[str]:
    """Single option letters in `text`, except the words "A" / "I" (followed by a lowercase word)."""
    return {
        m.group(1) for m in STANDALONE_LETTER_RE.finditer(text) if not _is_word(text, m.start(1), m.end(1))
    }


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
    try:
        with time_limit(timeout_s):
            prediction = extract_answer(completion, fallback)
            kind, value = classify_gold(gold)
            if prediction is None or not prediction:
                return Grade(0.0, "no_answer", unparsed_gold=kind == "text")
            if len(prediction) > MAX_ANSWER_CHARS:
                return Grade(0.0, kind, unparsed_gold=kind == "text")
            if kind == "choice":
                letter, option_text = value
                ok = choice_letter(prediction) == letter or (
                    option_text is not None and normalise_text(prediction) == option_text
                )
            elif kind == "yesno":
                ok = yes_no(prediction) == value
            elif kind == "math":
                ok = math_matches(value, gold, prediction)
            else:
                ok = normalise_text(prediction) == value
    except GradeTimeout:
        return Grade(0.0, "timeout", timed_out=True)
    return Grade(float(ok), kind, unparsed_gold=kind == "text")


def math_matches(gold_value: list, gold: str, prediction: str) -> bool:
    """math-verify finds the prediction equal to the gold (gold first), and what the two say around their
    numbers agrees: a percent sign the gold has not is part of the prediction's number as written (`400%` is
    not `4`), and units or variables stated on both sides must be the same (`4 km` is not `4 cm`, `y = 2` is
    not `x = 2`; `4 km` for a gold `4` is right, as math-verify has it)."""
    if "%" not in gold:
        prediction = re.sub(r"\\?%", "", prediction)
    predicted = read_math(prediction)
    if not (predicted and verify(gold_value, predicted, timeout_seconds=None)):
        return False
    (gold_units, gold_variable), (units, variable) = qualifiers(gold), qualifiers(prediction)
    if gold_units and units and not gold_units & words(prediction):
        return False
    return not (gold_variable and variable and gold_variable != variable)


def qualifiers(text: str) -> tuple[set[str], str | None]:
    """The words after a text's first number (its unit: `4 cm` -> {cm}, `16 square units` -> {square, unit}), and
    the variable it assigns (`x = 2` -> x), read from the text with its LaTeX commands taken out."""
    text = plain_text(text)
    number = re.search(r"\d", text)
    units = words(text[number.start() :]) if number else set()
    variable = re.match(r"\s*([A-Za-z])\s*=", text)
    return units, variable.group(1) if variable else None


def words(text: str) -> set[str]:
    """The words of a text, lower case, singular, units by one name (`centimeters` -> cm), without the small
    words that say nothing about a quantity (`the`, `is`, `in`, ...)."""
    out = set()
    for word in re.findall(r"[A-Za-z]+", plain_text(text).lower()):
        word = word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word
        if word not in FILLER_WORDS:
            out.add(UNIT_NAMES.get(word, word))
    return out


def plain_text(text: str) -> str:
    """Text with LaTeX reduced to its words: `\\text{ cm}` -> ` cm`, other commands and braces -> spaces."""
    text = WRAPPER_RE.sub(
        r" \1 ", re.sub(r"\\(?:begin|end)\s*{[^{}]*}", " ", text)
    )  # \begin{pmatrix}: no word
    return re.sub(r"\\[A-Za-z]+|[{}$\\]", " ", text)


def accuracy_reward(completion: str, answer: str, timeout_s: float = 5.0, fallback: bool = False) -> float:
    """1.0 if the `<answer>` content matches the gold `answer`, else 0.0."""
    return grade(completion, answer, timeout_s, fallback).score


# ------------------------------------------------------------------ time limit


_warned_thread = False


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise GradeTimeout after `seconds` (SIGALRM; the main thread only, elsewhere unbounded and said once).

    math-verify's own limit is whole seconds and returns "no match" on timeout without telling the caller,
    so we turn it off and use this one, which lets timeouts be counted. SIGALRM fires between Python
    bytecodes only: work inside one C call (sympy's big integers) is bounded by `bounds.unbounded` refusing it
    and, in the reward workers, by the worker being killed (observe_r1.rewards.compose)."""
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
    armed = True

    def on_alarm(signum, frame):
        if armed:  # not once the block is done: the alarm may fire while it is being disarmed
            raise GradeTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
