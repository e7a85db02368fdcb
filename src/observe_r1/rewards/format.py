"""Format rewards: does a completion have the required tag layout? (spec section 2)

A layout is data: a sequence of tagged blocks, each with how often it may occur, whether its text may be
empty, and the blocks it may hold. It is written as a short string (also in the config, `reward.layouts`):

    observe think answer                      Observe-R1: each once, in this order
    block~        the block's own text may be empty         block*  block+  block?  block{2,}  how often
    block(a b)    blocks allowed inside (in this order, text around them)
    block(^a b)   ... and `a` comes first (only whitespace before it)
    block(=a b)   ... and nothing but those blocks (and whitespace) inside

Built in:
  observe          `observe think answer` (Observe-R1)
  observe_nested   `think(^observe) answer`, accepted besides `observe` (the original accepted both)
  think            `think answer` (the plain GRPO layout)
  think_empty_ok   `think~ answer` (thought dropout, TON)
  parallel         `think(Parallel*(=Path{2,} Summary)) answer` (Parallel-R1)
  cued             `difficulty think~ answer` (Think-How-to-Think: a difficulty cue first)

The checker is stack-based: the tags of the layout (and observe / think / answer) are read in order, every
opened tag must close in nesting order, the top-level blocks must match the layout exactly with only
whitespace around them (end-of-sequence tokens such as <|im_end|> may follow), a block may hold only the
blocks its layout names, and a block's own text (without the blocks inside it) must be non-empty unless
marked `~` or `=` (text of only invisible characters, a zero-width space or a byte-order mark, is empty).
Each returns 1.0 or 0.0; the weight (0.5 in the paper) is set in the config, not here.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from dataclasses import dataclass

TAGS = ("observe", "think", "answer")  # always read as tags, so a stray one breaks any layout
BLANK_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")  # letters and symbols that render as nothing
END_RE = re.compile(r"(?:\s|<\|im_end\|>|<\|endoftext\|>|</s>)*")  # what may follow the last block


@dataclass(frozen=True)
class Block:
    tag: str
    low: int = 1  # occurrences: at least
    high: int | None = 1  # at most (None: unbounded)
    may_be_empty: bool = False
    children: tuple[Block, ...] = ()
    first_child: bool = False  # `^`: the first child opens the block
    only_children: bool = False  # `=`: no text besides the children


@dataclass(frozen=True)
class Layout:
    name: str
    blocks: tuple[Block, ...]

    @property
    def tags(self) -> set[str]:
        found: set[str] = set(TAGS)
        stack = list(self.blocks)
        while stack:
            block = stack.pop()
            found.add(block.tag)
            stack.extend(block.children)
        return found


BUILTIN_LAYOUTS = {
    "observe": "observe think answer",
    "observe_nested": "think(^observe) answer",
    "think": "think answer",
    "think_empty_ok": "think~ answer",
    "parallel": "think(Parallel*(=Path{2,} Summary)) answer",
    "cued": "difficulty think~ answer",
}
LAYOUTS = tuple(BUILTIN_LAYOUTS)


# ------------------------------------------------------------------ the layout grammar

_TOKEN_RE = re.compile(r"\s*(?:(?P<tag>[A-Za-z_][\w-]*)|(?P<sym>[()~*+?^=])|(?P<count>\{\d+,\d*\}))")


def parse_layout(name: str, spec: str) -> Layout:
    """A layout from its string form (module docstring); a ValueError names what is wrong."""
    tokens = [m for m in _TOKEN_RE.finditer(spec)]
    text = "".join(m.group(0) for m in tokens)
    if text.strip() != spec.strip():
        raise ValueError(f"format layout {name!r}: cannot read {spec!r}")
    items = [m.group("tag") or m.group("sym") or m.group("count") for m in tokens]
    blocks, rest = _blocks(items, name, spec)
    if rest or not blocks:
        raise ValueError(f"format layout {name!r}: cannot read {spec!r}")
    return Layout(name, tuple(blocks))


def _blocks(items: list[str], name: str, spec: str) -> tuple[list[Block], list[str]]:
    blocks: list[Block] = []
    while items and items[0] not in ")":
        tag, items = items[0], items[1:]
        if not re.fullmatch(r"[A-Za-z_][\w-]*", tag):
            raise ValueError(f"format layout {name!r}: expected a tag at {tag!r} in {spec!r}")
        block = Block(tag)
        while items and items[0] in ("~", "*", "+", "?", "(") or items and items[0].startswith("{"):
            mark, items = items[0], items[1:]
            if mark == "~":
                block = dataclasses.replace(block, may_be_empty=True)
            elif mark in ("*", "+", "?"):
                block = dataclasses.replace(block, low=int(mark == "+"), high=1 if mark == "?" else None)
            elif mark.startswith("{"):
                low, high = mark[1:-1].split(",")
                block = dataclasses.replace(block, low=int(low), high=int(high) if high else None)
            else:  # "(": the children
                first = only = False
                while items and items[0] in ("^", "="):
                    first, only = first or items[0] == "^", only or items[0] == "="
                    items = items[1:]
                children, items = _blocks(items, name, spec)
                if not items or items[0] != ")" or not children:
                    raise ValueError(f"format layout {name!r}: unbalanced or empty ( ) in {spec!r}")
                items = items[1:]
                block = dataclasses.replace(
                    block, children=tuple(children), first_child=first, only_children=only
                )
        blocks.append(block)
    return blocks, items


@functools.lru_cache(maxsize=64)
def layout_of(name: str, spec: str | None = None) -> Layout:
    """A built-in layout by name, or `spec` (a config's `reward.layouts` entry) parsed."""
    if spec is None:
        if name not in BUILTIN_LAYOUTS:
            raise ValueError(f"unknown format layout {name!r}; choose from {', '.join(LAYOUTS)} or define it in "
                             "reward.layouts")  # fmt: skip
        spec = BUILTIN_LAYOUTS[name]
    return parse_layout(name, spec)


# ------------------------------------------------------------------ the checker


@dataclass
class _Node:
    tag: str
    children: list[_Node]
    text: str = ""  # its own text, children left out
    leading: str = ""  # its own text before the first child


def _parse(completion: str, tags: set[str]) -> tuple[list[_Node], list[str]] | None:
    """The tree of `tags` in the completion and the top-level text between nodes; None if they do not nest."""
    pattern = re.compile(r"<(/?)(" + "|".join(map(re.escape, sorted(tags, key=len, reverse=True))) + r")>")
    root = _Node("", [])
    stack, at = [root], 0
    texts: list[list[str]] = [[]]  # the text pieces of each open node
    for m in pattern.finditer(completion):
        texts[-1].append(completion[at : m.start()])
        at = m.end()
        if not m.group(1):
            node = _Node(m.group(2), [])
            stack[-1].children.append(node)
            stack.append(node)
            texts.append([])
        else:
            if len(stack) == 1 or stack[-1].tag != m.group(2):
                return None
            node, pieces = stack.pop(), texts.pop()
            node.text, node.leading = "".join(pieces), pieces[0] if pieces else ""
    if len(stack) != 1:
        return None
    texts[0].append(completion[at:])
    return root.children, texts[0]


def _matches(nodes: list[_Node], blocks: tuple[Block, ...]) -> bool:
    """The nodes are the blocks in order, each within its count, each valid inside."""
    i = 0
    for block in blocks:
        count = 0
        while i < len(nodes) and nodes[i].tag == block.tag and (block.high is None or count < block.high):
            if not _valid(nodes[i], block):
                return False
            i, count = i + 1, count + 1
        if count < block.low:
            return False
    return i == len(nodes)


def _valid(node: _Node, block: Block) -> bool:
    if not (block.may_be_empty or block.only_children or visible(node.text)):
        return False
    if block.only_children and visible(node.text):
        return False
    if block.first_child and (not node.children or visible(node.leading)):
        return False
    return _matches(node.children, block.children)


def visible(text: str) -> bool:
    """Whether `text` holds a character that shows: not whitespace, a control or format character (a
    zero-width space, a byte-order mark, a joiner) or a blank filler (Hangul and Braille blanks)."""
    return any(
        not (ch.isspace() or unicodedata.category(ch).startswith("C") or ch in BLANK_FILLERS) for ch in text
    )


def check_layout(completion: str, layout: Layout) -> float:
    """1.0 if the completion has the layout exactly (module docstring), else 0.0."""
    parsed = _parse(completion, layout.tags)
    if parsed is None:
        return 0.0
    nodes, between = parsed
    outside_ok = all(not t.strip() for t in between[:-1]) and END_RE.fullmatch(between[-1]) is not None
    return float(outside_ok and _matches(nodes, layout.blocks))


def format_reward(completion: str, layout: str = "observe", spec: str | None = None) -> float:
    """1.0 if `completion` has the `layout` exactly (a built-in name, or `spec` in the layout grammar)."""
    if layout == "observe_nested" and spec is None:
        return max(
            check_layout(completion, layout_of("observe")), check_layout(completion, layout_of(layout))
        )
    return check_layout(completion, layout_of(layout, spec))
