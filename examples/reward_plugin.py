"""An example reward plug-in: use it with

    reward:
      terms:
        - {name: accuracy, weight: 1.0}
        - {name: observe_format, weight: 0.5}
        - {name: examples/reward_plugin.py:observe_mentions_colours, weight: 0.2}

It rewards an <observe> block that names the colours actually present in the image (read from the
pixels), and shows what a plug-in receives: the completions, the images, the group ids and every dataset
column. It returns None (not applicable) for images without any of the four colours.
"""

from __future__ import annotations

import re

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}


def colours_in(image) -> set[str]:
    pixels = set(image.convert("RGB").getdata())
    return {name for name, rgb in COLOURS.items() if rgb in pixels}


def observe_mentions_colours(completions, images, group_ids, **columns):
    scores = []
    for completion, imgs in zip(completions, images, strict=True):
        present = set().union(*(colours_in(im) for im in imgs)) if imgs else set()
        if not present:
            scores.append(None)  # nothing to check: excluded from this term's mean
            continue
        m = re.search(r"<observe>(.*?)</observe>", completion, re.S)
        named = {c for c in COLOURS if m and c in m.group(1).lower()}
        scores.append(len(named & present) / len(present) - 0.5 * len(named - present) / len(COLOURS))
    return scores
