"""Video frames -> Qwen-VL's video inputs, through the image processor's PIL path (no torchvision).

Qwen-VL's vision tower takes a video as pairs of frames (temporal patch 2): each patch row holds
[channels, 2 frames, patch, patch]. The image processor gives a still image the same layout with its frame
written twice, so a video's rows are the image processor's rows of its frames with the second copy replaced
by the next frame's (tested against transformers' own video processor layout in tests/test_video.py).
How a model learns where in time a pair sits differs by family (`VideoTiming`):
  qwen2_vl    nothing: pairs follow each other on the temporal rope axis
  qwen2_5_vl  `second_per_grid_ts`: the temporal position advances tokens_per_second x seconds per pair
  qwen3_vl    text: each pair is written as `<t seconds><|vision_start|><|video_pad|>...<|vision_end|>`
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

FRAME_FACTOR = 2  # Qwen-VL's temporal patch: frames go in pairs


@dataclass(frozen=True)
class VideoSampling:
    """`data.video_*`: how frames are taken from a video."""

    fps: float = 2.0  # frames sampled per second of video
    min_frames: int = 4
    max_frames: int = 16
    max_seconds: float = 600.0  # a longer video is refused by `data check` and skipped in training; 0 = any
    max_pixels: int = 602_112  # of one frame (Qwen's 768 x 28 x 28), lowered to fit total_pixels
    total_pixels: int = (
        3_211_264  # of all frames: about 4,096 video tokens at Qwen's 28 x 28 per token and pair
    )
    timeout_s: float = 60.0  # decoding one video in a step; past it the prompt is skipped (counted)

    @classmethod
    def of(cls, data_cfg: Any) -> VideoSampling:
        """From `data.video_*` (config.DataConfig)."""
        return cls(**{f: getattr(data_cfg, f"video_{f}") for f in cls.__dataclass_fields__})


@dataclass
class Video:
    frames: list[Image.Image]  # RGB, an even count
    timestamps: list[float]  # seconds of each frame in the source video
    fps: float  # frames per second of the sample (Qwen's `sample_fps`): a grid of 2 frames is 2/fps seconds

    @property
    def size(self) -> tuple[int, int]:
        return self.frames[0].size


class VideoTiming(str, Enum):
    NONE = "qwen2_vl"
    GRID = "qwen2_5_vl"
    TEXT = "qwen3_vl"

    @classmethod
    def of(cls, model_type: str | None) -> VideoTiming:
        if model_type and model_type.startswith("qwen3"):
            return cls.TEXT
        return cls.NONE if model_type == "qwen2_vl" else cls.GRID


def frame_pixels(frames: int, min_pixels: int, max_pixels: int, total_pixels: int) -> int:
    """The largest area of one frame (qwen-vl-utils): `max_pixels`, lowered so that the video's pairs of frames
    stay within `total_pixels` together, never below 1.05 x `min_pixels`."""
    return max(min(max_pixels, total_pixels * FRAME_FACTOR // max(frames, 1)), int(min_pixels * 1.05))


def video_grid(frames: int, width: int, height: int, factor: int, min_pixels: int, max_frame_pixels: int):
    """(t, h, w) patch grid of a `frames`-frame video of width x height (patch = factor // merge)."""
    h, w = smart_resize(height, width, factor, min_pixels, max_frame_pixels)
    return -(-frames // FRAME_FACTOR), h, w


def pair_frames(frame_rows: torch.Tensor, frames: int, channels: int = 3) -> torch.Tensor:
    """[frames * P, C * 2 * p * p] image-processor rows of each frame (its temporal pair a copy of itself)
    -> [frames / 2 * P, C * 2 * p * p] video rows: frame 2k and 2k + 1 in one patch."""
    rows, width = frame_rows.shape
    patch_area = width // (channels * FRAME_FACTOR)
    x = frame_rows.view(frames, rows // frames, channels, FRAME_FACTOR, patch_area)[
        :, :, :, 0
    ]  # [F, P, C, pp]
    x = x.view(frames // FRAME_FACTOR, FRAME_FACTOR, rows // frames, channels, patch_area)
    return x.permute(0, 2, 3, 1, 4).reshape(rows // FRAME_FACTOR, width)


def pair_times(video: Video) -> list[float]:
    """The time of each pair of frames: the mean of its two frames' (Qwen3-VL's timestamps)."""
    t = video.timestamps
    return [(t[i] + t[i + 1]) / 2 for i in range(0, len(t), FRAME_FACTOR)]


def process_video(image_processor: Any, video: Video, size: dict) -> tuple[torch.Tensor, list[int]]:
    """(pixel rows, [t, h, w]) of one video, its frames processed as images of one size."""
    out = image_processor(images=video.frames, size=size, return_tensors="pt")
    grid = out["image_grid_thw"]
    assert bool((grid == grid[0]).all()), "the frames of one video have one size"
    rows = pair_frames(out["pixel_values"], len(video.frames))
    return rows, [len(video.frames) // FRAME_FACTOR, int(grid[0, 1]), int(grid[0, 2])]


def timestamp_placeholders(times: list[float], tokens_per_pair: int, start: str, pad: str, end: str) -> str:
    """Qwen3-VL's text for one video: `<t seconds>` then the pair's tokens, for each pair of frames."""
    return "".join(f"<{t:.1f} seconds>{start}{pad * tokens_per_pair}{end}" for t in times)


def seconds_per_grid(video: Video) -> float:
    """Seconds between two pairs of frames (Qwen2.5-VL's `second_per_grid_ts`)."""
    return FRAME_FACTOR / video.fps


def even_times(frames: int, fps: float) -> list[float]:
    """Pair times of a video of `frames` frames sampled at `fps` (for counting tokens before decoding)."""
    t = np.arange(frames) / fps
    return [float((t[i] + t[min(i + 1, frames - 1)]) / 2) for i in range(0, frames, FRAME_FACTOR)]
