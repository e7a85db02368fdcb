"""What the grader refuses to evaluate: text whose evaluation has no bound in time or memory.

sympy evaluates exact integers inside single C calls that never return to Python: `$10^{10^{10}}$` computes
for hours (SIGALRM cannot interrupt it; one such tower took 3.6 GB), and `(10^7)!` or `9!!!!` likewise. So a text
is given to math-verify only when it passes these rules; otherwise it is not read as math (a prediction then
scores 0, a gold is compared as text and counted in `reward/unparsed_gold`):

  length      at most MAX_CHARS characters
  numbers     no number literal longer than MAX_DIGITS digits
  powers      no power inside an exponent (`a^{b^c}`, `a^b^c`, `a**b**c`, `a^{b!}`); the number literals of an
              exponent multiply to at most MAX_EXPONENT, and times the digits of its base to at most
              MAX_POWER_DIGITS (the digits of the result)
  factorials  no run of three `!` or more, no factorial of a power or of a factorial (`(10^7)!`, `(3!)!`);
              the literals under one multiply to at most MAX_FACTORIAL
  binomials   in a text with `\\binom` or `\\choose`, every literal at most MAX_FACTORIAL

Products of literals over-estimate sums (`x^{2n+1}` counts 2), so the rules err on the side of refusing.
Pure functions on strings; docs/rewards.md states the rule.
"""

from __future__ import annotations

import math
import re

MAX_CHARS = 1000
MAX_DIGITS = 300
MAX_EXPONENT = 10_000
MAX_POWER_DIGITS = 100_000
MAX_FACTORIAL = 10_000

LITERAL_RE = re.compile(r"\d+(?:\.\d+)?")
OPEN, CLOSE = "{([", "})]"


def unbounded(text: str) -> str | None:
    """Why evaluating `text` as math could run without bound (the rule it breaks), or None."""
    if len(text) > MAX_CHARS:
        return f"longer than {MAX_CHARS} characters"
    digits = max((len(m.group(0)) for m in re.finditer(r"\d+", text)), default=0)
    if digits > MAX_DIGITS:
        return f"a number of {digits} digits (at most {MAX_DIGITS})"
    text = text.replace("**", "^")
    for i, ch in enumerate(text):
        if ch == "^":
            why = _power(text, i)
        elif ch == "!" and text[i - 1 : i] not in ("\\", "!") and text[i + 1 : i + 2] != "=":
            why = _factorial(text, i)
        else:
            continue
        if why:
            return why
    if re.search(r"\\(?:[dt]?binom|choose)\b", text) and _bound(text) > MAX_FACTORIAL:
        return f"a binomial of a number above {MAX_FACTORIAL}"
    return None


def _power(text: str, at: int) -> str | None:
    exponent, end = _operand_after(text, at + 1)
    if "^" in exponent or re.search(r"!(?!=)", exponent) or text[end:].lstrip().startswith("^"):
        return "a power inside an exponent"
    bound = _bound(exponent)
    if bound > MAX_EXPONENT:
        return f"an exponent above {MAX_EXPONENT}"
    base = _operand_before(text, at)
    if sum(len(d) for d in re.findall(r"\d+", base)) * bound > MAX_POWER_DIGITS:
        return f"a power of more than {MAX_POWER_DIGITS} digits"
    return None


def _factorial(text: str, at: int) -> str | None:
    run = len(text[at:]) - len(text[at:].lstrip("!"))
    if run >= 3:
        return "a factorial of a factorial"
    operand = _operand_before(text, at)
    if "^" in operand or "!" in operand:
        return "a factorial of a power or of a factorial"
    if _bound(operand) > MAX_FACTORIAL:
        return f"a factorial of a number above {MAX_FACTORIAL}"
    return None


def _bound(text: str) -> float:
    """The product of the number literals in `text` (each at least 1): an upper bound of its value."""
    return math.prod(max(1.0, float(m.group(0))) for m in LITERAL_RE.finditer(text))


def _operand_after(text: str, i: int) -> tuple[str, int]:
    """The exponent that starts at text[i]: a bracketed group, a command with its groups, a signed number or
    one character; and where it ends."""
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        return "", i
    ch = text[i]
    if ch in "+-":
        rest, end = _operand_after(text, i + 1)
        return ch + rest, end
    if ch in OPEN:
        end = _matching(text, i)
        return text[i + 1 : end], end + 1
    if ch == "\\":
        m = re.match(r"\\[A-Za-z]+", text[i:])
        end = i + (m.end() if m else 1)
        while end < len(text) and text[end] == "{":
            end = _matching(text, end) + 1
        return text[i:end], end
    if ch.isdigit():
        m = LITERAL_RE.match(text, i)
        assert m is not None
        return m.group(0), m.end()
    return ch, i + 1


def _operand_before(text: str, i: int) -> str:
    """What a postfix `!` (or the base of a `^`) at text[i] applies to: a bracketed group, a number, or a name."""
    j = i
    while j > 0 and text[j - 1].isspace():
        j -= 1
    if j == 0:
        return ""
    ch = text[j - 1]
    if ch in CLOSE:
        start = _matching(text, j - 1, forward=False)
        return text[start + 1 : j - 1]
    m = re.search(r"(?:\d+(?:\.\d+)?|[A-Za-z]+)$", text[:j])
    return m.group(0) if m else ch


def _matching(text: str, i: int, forward: bool = True) -> int:
    """The index of the bracket matching the one at text[i], forward from an opening bracket or back from a
    closing one; the end of the text (len or -1) when none matches."""
    opens, closes, step, end = (OPEN, CLOSE, 1, len(text)) if forward else (CLOSE, OPEN, -1, -1)
    depth = 0
    for j in range(i, end, step):
        if text[j] in opens:
            depth += 1
        elif text[j] in closes:
            depth -= 1
            if depth == 0:
                return j
    return end
