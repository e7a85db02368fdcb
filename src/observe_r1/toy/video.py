"""A synthetic video task that needs time: short clips of shapes that move, blink and appear, with questions
no single frame answers, gold by construction, and reference responses in the observe/think/answer layout.

Levels (the ladder's difficulty, easy to hard):
  1 direction  one shape moves steadily: "Which way does the red circle move?" -> left / right / up / down
  2 blink      one shape disappears 1-3 times: "How many times does the blue square disappear?" -> 1 / 2 / 3
  3 order      two shapes appear one after the other: "Which appears first, the red circle or the green
               triangle?" -> red / green
A clip is `FRAMES` frames of SIZE x SIZE pixels at `FPS` frames per second (an mp4, H.264 through PyAV); an
event spans whole pairs of frames, the unit in which Qwen-VL's vision tower sees time (temporal patch 2).
Each row also holds Factum's responses (`facts`, `factum_format`, `factum`: event facts before the reasoning).
`observe-r1 synth --video --out DIR` writes the splits; `data.train: [video]` builds them into a run's output
folder; configs/recipes/video.yaml and factum.yaml train on them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from observe_r1.toy.synth import COLOURS

FRAMES = 12  # 6 pairs of frames
FPS = 4.0
SIZE = 112  # pixels: 4 x 4 video tokens per pair of frames (2 x 2 at 56 px taught nothing: docs/results.md)
SHAPES = ("circle", "square", "triangle")
COLOUR_NAMES = ("red", "green", "blue")
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
LEVELS = {1: "direction", 2: "blink", 3: "order"}


@dataclass(frozen=True)
class Sprite:
    shape: str
    colour: str
    path: tuple[tuple[float, float] | None, ...]  # (row, col) centre in [0, 1] per frame; None = hidden

    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Clip:
    question: str
    answer: str
    observe: str
    think: str
    sprites: tuple[Sprite, ...]
    level: int

    @property
    def skill(self) -> str:
        return LEVELS[self.level]

    def reference(self) -> str:
        return f"<observe>\n{self.observe}\n</observe>\n{self._reasoning(self.think)}"

    def factum(self, think: str = "") -> str:
        """Factum's layout: the event facts first, then the reasoning and the answer (`think` replaces the
        reasoning: the format warm-start's placeholder)."""
        return f"<facts>\n{self.observe}\n</facts>\n{self._reasoning(think or self.think)}"

    def _reasoning(self, think: str) -> str:
        return f"<think>\n{think}\n</think>\n<answer>{self.answer}</answer>"


def q_direction(rng: random.Random) -> Clip:
    direction = rng.choice(list(DIRECTIONS))
    dr, dc = DIRECTIONS[direction]
    across = rng.uniform(0.35, 0.65)  # the other axis
    start = (0.5 - 0.3 * dr if dr else across, 0.5 - 0.3 * dc if dc else across)
    step = 0.6 / (FRAMES - 1)
    path = tuple((start[0] + dr * step * i, start[1] + dc * step * i) for i in range(FRAMES))
    sprite = Sprite(rng.choice(SHAPES), rng.choice(COLOUR_NAMES), path)
    where = {"left": "on the right", "right": "on the left", "up": "at the bottom", "down": "at the top"}
    observe = f"The {sprite.name()} starts {where[direction]} and ends on the other side."
    think = f"It moves {direction} over the frames."
    return Clip(f"Which way does the {sprite.name()} move?", direction, observe, think, (sprite,), 1)


def q_blink(rng: random.Random) -> Clip:
    times = rng.randint(1, 3)
    hidden = sorted(rng.sample(range(1, FRAMES // 2, 2), times))  # pairs 1, 3, 5: never two in a row
    centre = (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7))
    path = tuple(None if i // 2 in hidden else centre for i in range(FRAMES))
    sprite = Sprite(rng.choice(SHAPES), rng.choice(COLOUR_NAMES), path)
    gone = ", ".join(f"{2 * p + 1}-{2 * p + 2}" for p in hidden)
    observe = f"The {sprite.name()} is missing in frames {gone}."
    think = f"It disappears {times} time{'s' * (times > 1)}."
    return Clip(
        f"How many times does the {sprite.name()} disappear?", str(times), observe, think, (sprite,), 2
    )


def q_order(rng: random.Random) -> Clip:
    c1, c2 = rng.sample(COLOUR_NAMES, 2)
    s1, s2 = rng.choice(SHAPES), rng.choice(SHAPES)
    first_pair = rng.randrange(FRAMES // 2 - 1)
    second_pair = rng.randrange(first_pair + 1, FRAMES // 2)
    spots = [(0.3, 0.3), (0.3, 0.7), (0.7, 0.3), (0.7, 0.7)]
    a_at, b_at = rng.sample(spots, 2)
    a = Sprite(s1, c1, tuple(a_at if i // 2 >= first_pair else None for i in range(FRAMES)))
    b = Sprite(s2, c2, tuple(b_at if i // 2 >= second_pair else None for i in range(FRAMES)))
    shown = [a, b] if rng.random() < 0.5 else [b, a]  # the question names them in either order
    observe = f"The {a.name()} appears in frame {2 * first_pair + 1}, the {b.name()} in frame {2 * second_pair + 1}."
    question = f"Which appears first, the {shown[0].name()} or the {shown[1].name()}? Answer with its colour."
    return Clip(question, c1, observe, f"The {a.name()} appears earlier.", (a, b), 3)


GENERATORS = {1: q_direction, 2: q_blink, 3: q_order}


def render(clip: Clip, size: int = SIZE) -> list[np.ndarray]:
    """The clip's frames, [size, size, 3] uint8 each."""
    frames = []
    radius = size * 0.14
    for i in range(FRAMES):
        image = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        for sprite in clip.sprites:
            at = sprite.path[i]
            if at is None:
                continue
            cy, cx = at[0] * size, at[1] * size
            box = (cx - radius, cy - radius, cx + radius, cy + radius)
            fill = COLOURS[sprite.colour]
            if sprite.shape == "circle":
                draw.ellipse(box, fill=fill)
            elif sprite.shape == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
        frames.append(np.asarray(image))
    return frames


def write_video(path: str | Path, frames: list[np.ndarray], fps: float = FPS, codec: str = "libx264") -> None:
    """Frames ([h, w, 3] uint8) -> a video file (mp4 H.264 by default; any codec PyAV's FFmpeg encodes)."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=round(fps))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "fast"}  # colours survive: the task is about them
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def generate_split(
    seed: int, split: str, n: int, levels: tuple[int, ...], exclude: Set[str] = frozenset()
) -> list[Clip]:
    """n clips, each from its own RNG stream; a clip whose (question, sprites) is in `exclude` is redrawn."""
    out = []
    for i in range(n):
        rng = random.Random(f"observe-r1-video/{seed}/{split}/{i}")
        clip = GENERATORS[rng.choice(levels)](rng)
        while _key(clip) in exclude:
            clip = GENERATORS[rng.choice(levels)](rng)
        out.append(clip)
    return out


def _key(clip: Clip) -> str:
    return repr((clip.question, clip.sprites))


def write_dataset(
    out_dir: str | Path,
    train: int,
    test: int,
    seed: int = 0,
    levels: tuple[int, ...] = tuple(LEVELS),
    val: int = 0,
    progress=None,
) -> dict[str, Path]:
    """DIR/{train,test[,val]}.jsonl in the native layout and DIR/videos/*.mp4; the splits share no clip."""
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    splits = {"test": generate_split(seed, "test", test, levels)}
    seen = {_key(c) for c in splits["test"]}
    if val:
        splits["val"] = generate_split(seed, "val", val, levels, exclude=seen)
        seen |= {_key(c) for c in splits["val"]}
    splits["train"] = generate_split(seed, "train", train, levels, exclude=seen)
    paths = {}
    for split, clips in splits.items():
        path = out / f"{split}.jsonl"
        with path.open("w") as f:
            for i, clip in enumerate(clips):
                sid = f"{split}-{i:06d}"
                rel = f"videos/{sid}.mp4"
                write_video(out / rel, render(clip))
                f.write(json.dumps(native_row(sid, rel, clip)) + "\n")
                if progress is not None:
                    progress()
        paths[split] = path
    return paths


def native_row(sid: str, video: str, clip: Clip) -> dict:
    content = [{"type": "video", "video": video}, {"type": "text", "text": clip.question}]
    return {
        "id": sid,
        "messages": [{"role": "user", "content": content}],
        "answer": clip.answer,
        "solution": clip.reference(),
        # Factum's staged cold start (configs/recipes/factum.yaml): facts alone, the layout, then the reasoning
        "facts": f"<facts>\n{clip.observe}\n</facts>",
        "factum_format": clip.factum("The facts above answer it."),
        "factum": clip.factum(),
        "level": clip.level,
        "skill": clip.skill,
    }


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    """Questions and reference responses, for a tokenizer that tokenises the task compactly."""
    rng = random.Random(f"observe-r1-video-corpus/{seed}")
    texts = []
    for _ in range(n):
        clip = GENERATORS[rng.choice(tuple(LEVELS))](rng)
        texts += [clip.question, clip.reference()]
    return texts
