"""A digit too small to read until it is cropped: the toy task of `crop` (thinking with images, docs/tools.md).

A large white canvas holds one small boxed digit (3 x 5 font pixels of 1 image pixel each) and a few distractor
boxes; the question names the digit's box. Downscaled to the model's pixel budget the digit is a smudge; a
`crop` of the box returns it enlarged. Each row's reference response (`solution`, the chat layout) calls the
tool on the right box, then answers:
    <tool_call>{"name": "crop", "arguments": {"bbox": [x1, y1, x2, y2]}}</tool_call>   (a turn)
    <answer>7</answer>                                                              (the next one)
Gold by construction; images are PNG files beside the data.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from observe_r1.toy.synth import _draw_digit

CANVAS = 448
BOX = 16  # a side of each box, pixels


def scene(rng: random.Random) -> tuple[Image.Image, list[int], str]:
    """The canvas, the digit's box [x1, y1, x2, y2] and the digit."""
    image = Image.new("RGB", (CANVAS, CANVAS), "white")
    draw = ImageDraw.Draw(image)
    boxes: list[list[int]] = []
    while len(boxes) < 4:
        x, y = rng.randrange(8, CANVAS - BOX - 8), rng.randrange(8, CANVAS - BOX - 8)
        if all(abs(x - b[0]) > 2 * BOX or abs(y - b[1]) > 2 * BOX for b in boxes):
            boxes.append([x, y, x + BOX, y + BOX])
    digit = str(rng.randrange(10))
    for k, box in enumerate(boxes):
        draw.rectangle(box, outline=(200, 0, 0) if k == 0 else (0, 0, 200))
        _draw_digit(draw, digit if k == 0 else str(rng.randrange(10)), box[0] + BOX / 2, box[1] + BOX / 2, 14)
    return image, boxes[0], digit


def row(sid: str, image: str, box: list[int], digit: str) -> dict:
    call = json.dumps({"name": "crop", "arguments": {"bbox": box}})
    question = f"Which digit is written in the red box at {box}?"
    return {
        "id": sid,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": question}],
            }
        ],
        "answer": digit,
        "solution": f"<tool_call>{call}</tool_call>",
        "level": 1,
        "skill": "zoom",
    }


def write_dataset(out_dir: str | Path, train: int, test: int, seed: int = 0) -> dict[str, Path]:
    """DIR/train.jsonl and DIR/test.jsonl with their images in DIR/images."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"zoom/{seed}")
    paths = {}
    for split, count in (("test", test), ("train", train)):
        rows = []
        for i in range(count):
            image, box, digit = scene(rng)
            name = f"images/{split}-{i:06d}.png"
            image.save(out / name)
            rows.append(row(f"{split}-{i:06d}", name, box, digit))
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths
