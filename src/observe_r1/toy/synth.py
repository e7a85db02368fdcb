"""Synthetic visual-reasoning ladder: random scene graphs rendered with PIL, questions at six levels.

Every image is a grid of cells (4 x 4 by default); a cell holds at most one shape. With the default
112 px image and Qwen's 28 px merged patches, one cell is exactly one image token, so a tiny model can
see each object. Digits are drawn with a built-in 3x5 bitmap font, so images do not depend on the
fonts installed.

Levels (difficulty grows with the number of steps and the amount that must be read off the image):
  1 count              How many shapes?
  2 filter_count       How many red shapes / circles / large shapes?
  3 compare            How many more red than blue shapes?
  4 spatial            Multiple choice (A-D): the colour of the nearest shape left/right/above/below X.
  5 digit_sum          Sum of the digits written in the shapes.
  6 digit_filter_sum   Sum of the digits written in the shapes of one colour (with distractors).

Each sample carries a reference response in the exact Observe-R1 layout, derived from the scene graph,
whose <answer> equals the gold answer by construction (tests check it).
"""

from __future__ import annotations

import json
import random
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from observe_r1.data.prompts import OBSERVE, THINK

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SIZES = ("small", "large")
LEVELS = {1: "count", 2: "filter_count", 3: "compare", 4: "spatial", 5: "digit_sum", 6: "digit_filter_sum"}
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "above": (-1, 0), "below": (1, 0)}

# 3x5 bitmap digits, rows top to bottom.
_FONT = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
}


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    row: int  # 1-based
    col: int  # 1-based
    digit: int | None = None

    def describe(self) -> str:
        digit = f" with {self.digit}" if self.digit is not None else ""
        return f"{self.size} {self.colour} {self.shape}{digit} at ({self.row},{self.col})"

    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class SynthSample:
    question: str
    answer: str
    think: str
    objects: tuple[Obj, ...]
    level: int

    @property
    def skill(self) -> str:
        return LEVELS[self.level]

    def reference(self) -> str:
        observe = "\n".join(o.describe() for o in self.objects)
        return f"<observe>\n{observe}\n</observe>\n<think>\n{self.think}\n</think>\n<answer>{self.answer}</answer>"


# ---------------------------------------------------------------- scenes


def random_scene(rng: random.Random, n: int, grid: int, digits: bool) -> tuple[Obj, ...]:
    cells = rng.sample([(r, c) for r in range(1, grid + 1) for c in range(1, grid + 1)], n)
    objs = [
        Obj(
            shape=rng.choice(SHAPES),
            colour=rng.choice(list(COLOURS)),
            size="large" if digits else rng.choice(SIZES),  # digits need room to be read
            row=r,
            col=c,
            digit=rng.randint(1, 9) if digits else None,
        )
        for r, c in cells
    ]
    return tuple(sorted(objs, key=lambda o: (o.row, o.col)))  # reading order, as the reference lists them


def _plural(shape: str) -> str:
    return shape + "s"


def _listing(objs: list[Obj]) -> str:
    return ", ".join(f"{o.name()} at ({o.row},{o.col})" for o in objs) if objs else "none"


def q_count(rng: random.Random, grid: int) -> SynthSample:
    objs = random_scene(rng, rng.randint(1, 6), grid, digits=False)
    n = len(objs)
    think = f"Counting the shapes one by one: {', '.join(str(i + 1) for i in range(n))}. There are {n}."
    return SynthSample("How many shapes are in the image?", str(n), think, objs, 1)


def q_filter_count(rng: random.Random, grid: int) -> SynthSample:
    objs = random_scene(rng, rng.randint(2, 7), grid, digits=False)
    kind = rng.choice(("colour", "shape", "size"))
    if kind == "colour":
        value = rng.choice(list(COLOURS))
        match = [o for o in objs if o.colour == value]
        question, what = f"How many {value} shapes are there?", f"{value} shapes"
    elif kind == "shape":
        value = rng.choice(SHAPES)
        match = [o for o in objs if o.shape == value]
        question, what = f"How many {_plural(value)} are there?", _plural(value)
    else:
        value = rng.choice(SIZES)
        match = [o for o in objs if o.size == value]
        question, what = f"How many {value} shapes are there?", f"{value} shapes"
    think = f"The {what} are: {_listing(match)}. That is {len(match)}."
    return SynthSample(question, str(len(match)), think, objs, 2)


def q_compare(rng: random.Random, grid: int) -> SynthSample:
    objs = random_scene(rng, rng.randint(3, 8), grid, digits=False)
    counts = {c: sum(o.colour == c for o in objs) for c in COLOURS}
    a, b = rng.sample(list(COLOURS), 2)
    if counts[a] < counts[b]:
        a, b = b, a
    diff = counts[a] - counts[b]
    question = f"How many more {a} shapes than {b} shapes are there?"
    think = f"{a}: {counts[a]}. {b}: {counts[b]}. {counts[a]} - {counts[b]} = {diff}."
    return SynthSample(question, str(diff), think, objs, 3)


def q_spatial(rng: random.Random, grid: int) -> SynthSample:
    while True:
        objs = random_scene(rng, rng.randint(3, 7), grid, digits=False)
        names = [o.name() for o in objs]
        anchors = [o for o in objs if names.count(o.name()) == 1]  # the reference must be unambiguous
        rng.shuffle(anchors)
        for anchor in anchors:
            direction = rng.choice(list(DIRECTIONS))
            target = _nearest(objs, anchor, direction)
            if target is not None:
                break
        else:
            continue
        break
    options = list(COLOURS)
    rng.shuffle(options)
    letters = "ABCD"
    letter = letters[options.index(target.colour)]
    option_text = " ".join(f"{letters[i]}. {c}" for i, c in enumerate(options))
    where = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}[
        direction
    ]
    question = f"What colour is the nearest shape {where} the {anchor.name()}? Options: {option_text}"
    line = "row" if direction in ("left", "right") else "column"
    think = (
        f"The {anchor.name()} is at ({anchor.row},{anchor.col}). The nearest shape {where} it in the same "
        f"{line} is the {target.name()} at ({target.row},{target.col}). It is {target.colour}, option {letter}."
    )
    return SynthSample(question, letter, think, objs, 4)


def _nearest(objs: tuple[Obj, ...], anchor: Obj, direction: str) -> Obj | None:
    """The closest object from `anchor` in `direction` along the same row or column, if any."""
    dr, dc = DIRECTIONS[direction]
    ahead = [
        o
        for o in objs
        if (o.row - anchor.row) * dr + (o.col - anchor.col) * dc > 0  # strictly in that direction
        and (o.row == anchor.row if dr == 0 else o.col == anchor.col)  # on the same line
    ]
    return min(ahead, key=lambda o: abs(o.row - anchor.row) + abs(o.col - anchor.col), default=None)


def q_digit_sum(rng: random.Random, grid: int) -> SynthSample:
    objs = random_scene(rng, rng.randint(2, 4), grid, digits=True)
    digits = [o.digit for o in objs]
    total = sum(d for d in digits if d is not None)
    think = f"The numbers are {', '.join(map(str, digits))}. {' + '.join(map(str, digits))} = {total}."
    return SynthSample("What is the sum of the numbers written in the shapes?", str(total), think, objs, 5)


def q_digit_filter_sum(rng: random.Random, grid: int) -> SynthSample:
    while True:
        objs = random_scene(rng, rng.randint(3, 6), grid, digits=True)
        colour = rng.choice([o.colour for o in objs])
        match = [o for o in objs if o.colour == colour]
        if len(match) < len(objs):  # at least one distractor of another colour
            break
    digits = [o.digit for o in match]
    total = sum(d for d in digits if d is not None)
    sum_text = " + ".join(map(str, digits)) + f" = {total}" if len(digits) > 1 else f"{total}"
    think = f"The {colour} shapes hold the numbers {', '.join(map(str, digits))}. {sum_text}."
    question = f"What is the sum of the numbers written in the {colour} shapes?"
    return SynthSample(question, str(total), think, objs, 6)


GENERATORS = {
    1: q_count,
    2: q_filter_count,
    3: q_compare,
    4: q_spatial,
    5: q_digit_sum,
    6: q_digit_filter_sum,
}


# ---------------------------------------------------------------- rendering


def render(objs: tuple[Obj, ...], image_size: int = 112, grid: int = 4) -> Image.Image:
    img = Image.new("RGB", (image_size, image_size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    cell = image_size / grid
    for o in objs:
        x0, y0 = (o.col - 1) * cell, (o.row - 1) * cell
        margin = cell * (0.06 if o.size == "large" else 0.24)
        box = (x0 + margin, y0 + margin, x0 + cell - margin, y0 + cell - margin)
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif o.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
        if o.digit is not None:
            _draw_digit(
                draw,
                str(o.digit),
                x0 + cell / 2,
                y0 + cell / 2 + (cell * 0.08 if o.shape == "triangle" else 0),
                cell,
            )
    return img


def _draw_digit(draw: ImageDraw.ImageDraw, digit: str, cx: float, cy: float, cell: float) -> None:
    px = max(1, round(cell / 14))  # 2 px per font pixel in a 28 px cell: a 6 x 10 glyph
    x0, y0 = round(cx - 1.5 * px), round(cy - 2.5 * px)
    for r, bits in enumerate(_FONT[digit]):
        for c, bit in enumerate(bits):
            if bit == "1":
                draw.rectangle(
                    (x0 + c * px, y0 + r * px, x0 + (c + 1) * px - 1, y0 + (r + 1) * px - 1), fill=(0, 0, 0)
                )


# ---------------------------------------------------------------- dataset files


def make_sample(rng: random.Random, levels: tuple[int, ...], grid: int = 4) -> SynthSample:
    return GENERATORS[rng.choice(levels)](rng, grid)


def _key(s: SynthSample) -> tuple:
    return (s.question, s.objects)


def generate_split(
    seed: int, split: str, n: int, levels: tuple[int, ...], exclude: Set[tuple] = frozenset(), grid: int = 4
) -> list[SynthSample]:
    """n samples, each drawn from its own RNG stream (so sample i does not depend on n); items whose
    (question, scene) appear in `exclude` are redrawn, keeping train and test disjoint."""
    out = []
    for i in range(n):
        rng = random.Random(f"observe-r1-synth/{seed}/{split}/{i}")
        s = make_sample(rng, levels, grid)
        while _key(s) in exclude:
            s = make_sample(rng, levels, grid)
        out.append(s)
    return out


def write_dataset(
    out_dir: str | Path,
    train: int,
    test: int,
    seed: int = 0,
    image_size: int = 112,
    levels: tuple[int, ...] = tuple(LEVELS),
    progress=None,
    val: int = 0,
) -> dict[str, Path]:
    """Write DIR/train.jsonl, DIR/test.jsonl, with `val` also DIR/val.jsonl (a validation split, for choosing
    among checkpoints without looking at the test split), and DIR/images/*.png (native format, image paths
    relative). The splits share no (question, scene)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits = {"test": generate_split(seed, "test", test, levels)}
    seen = {_key(s) for s in splits["test"]}
    if val:
        splits["val"] = generate_split(seed, "val", val, levels, exclude=seen)
        seen |= {_key(s) for s in splits["val"]}
    splits["train"] = generate_split(seed, "train", train, levels, exclude=seen)
    paths = {}
    for split, samples in splits.items():
        path = out / f"{split}.jsonl"
        with path.open("w") as f:
            for i, s in enumerate(samples):
                sid = f"{split}-{i:06d}"
                rel = f"images/{sid}.png"
                render(s.objects, image_size).save(out / rel)
                f.write(json.dumps(native_row(sid, rel, s)) + "\n")
                if progress is not None:
                    progress()
        paths[split] = path
    return paths


def native_row(sid: str, image: str, s: SynthSample) -> dict:
    return {
        "id": sid,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": s.question}],
            }
        ],
        "answer": s.answer,
        "solution": s.reference(),
        "level": s.level,
        "skill": s.skill,
    }


def corpus(n: int = 600, seed: int = 0) -> list[str]:
    """Text of questions and reference responses, for training the tiny models' tokenizer."""
    rng = random.Random(f"observe-r1-corpus/{seed}")
    texts = [
        OBSERVE,
        THINK,
    ] * 20  # the system prompts, so they tokenise compactly (fixed: the vocab depends on it)
    for _ in range(n):
        s = make_sample(rng, tuple(LEVELS))
        texts += [s.question, s.reference()]
    return texts
