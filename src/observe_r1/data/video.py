"""Video input: decoding with PyAV (FFmpeg's libraries), frame sampling by Qwen's rules, and the checks of
`data check`.

A video is a file (mp4, webm, mkv, avi, mov, gif, ... whatever FFmpeg decodes), its bytes, or a list of frame
images. Frames are sampled the way qwen-vl-utils samples them: `fps` frames per second of video, at least
`min_frames` and at most `max_frames`, spread evenly (`linspace` over the frame indices), and always an even
count (Qwen-VL's vision tower takes frames in pairs: temporal patch 2; a one-frame video repeats its frame).
A frame list is taken as already sampled at `fps` (the frames of a 2 fps video), thinned evenly when longer
than `max_frames`. Each `Video` keeps the time of its frames: Qwen2.5-VL spaces its temporal positions by
`second_per_grid` (`ChatEncoder`), Qwen3-VL writes them into the prompt.

Decoding is lazy (at rollout time, like images) and bounded: `load_videos` decodes in a small pool of threads
and gives up on a video after `timeout_s` (a counted, logged skip of that prompt, never a stalled step); a far
frame is reached by seeking to the key frame before it, so a 2-hour video costs its sampled frames, not its
216,000 frames. torchvision and decord are not used (torchvision has no CPU build next to CPU torch here).
"""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from observe_r1.data.sources import ParquetImage, open_image
from observe_r1.models.video import FRAME_FACTOR, Video, VideoSampling

SEEK_GAP_S = (
    4.0  # a sampled frame this far past the last decoded one is reached by a seek, not by decoding on
)
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv")
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="video-decode")  # PyAV decodes without the GIL


class VideoError(ValueError):
    """A video cannot be used: missing, corrupt, no frames, an unknown codec, too long, too slow to decode."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says, checked by decoding its first frame."""

    frames: int  # total frames (estimated from duration x rate when the container does not say)
    fps: float  # the video's frame rate
    width: int
    height: int

    @property
    def seconds(self) -> float:
        return self.frames / self.fps


VideoRef = str | bytes | ParquetImage | list  # a video file (path, bytes) or a list of frame image references


def _open(ref: str | bytes) -> Any:
    source = io.BytesIO(ref) if isinstance(ref, bytes) else ref
    try:
        return av.open(source, metadata_errors="ignore")
    except FileNotFoundError:
        raise VideoError(f"video not found: {ref!s}") from None
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"not a video FFmpeg can read ({type(e).__name__}: {e})") from None


def _stream(container: Any) -> Any:
    if not container.streams.video:
        raise VideoError("the file has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise VideoError(f"no decoder for the video codec (tag {getattr(stream, 'codec_tag', '?')!r})")
    stream.thread_type = "AUTO"
    return stream


def probe(ref: str | bytes) -> VideoInfo:
    """Frame count, rate and size of a video file, after decoding its first frame (a corrupt stream, an
    unknown codec or a file without frames fails here, as `data check` reports it)."""
    with _open(ref) as container:
        stream = _stream(container)
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as e:
            raise VideoError(f"the video stream cannot be decoded ({type(e).__name__}: {e})") from None
        if first is None:
            raise VideoError("the video has zero frames")
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 1.0
        frames = stream.frames
        if not frames:  # webm and some gifs do not record it: duration x rate
            seconds = float(stream.duration * stream.time_base) if stream.duration else None
            if seconds is None and container.duration:
                seconds = container.duration / av.time_base
            frames = max(1, round((seconds or 0) * fps))
        return VideoInfo(frames, fps, first.width, first.height)


def sampled_count(total: int, fps: float, sampling: VideoSampling) -> int:
    """Frames sampled from a `total`-frame video at `fps` (qwen-vl-utils' `smart_nframes`): `sampling.fps` per
    second, within [min_frames, max_frames], at most the video's own, an even count; a shorter video than 2
    frames gives 2 (its frame repeated)."""
    wanted = total / fps * sampling.fps
    low = math.ceil(sampling.min_frames / FRAME_FACTOR) * FRAME_FACTOR
    high = math.floor(min(sampling.max_frames, total) / FRAME_FACTOR) * FRAME_FACTOR
    n = min(max(wanted, low), high, total)
    return max(FRAME_FACTOR, math.floor(n / FRAME_FACTOR) * FRAME_FACTOR)


def check_length(info: VideoInfo, sampling: VideoSampling) -> None:
    if sampling.max_seconds and info.seconds > sampling.max_seconds:
        raise VideoError(
            f"the video is {info.seconds:.0f} s long, over data.video_max_seconds={sampling.max_seconds:g}"
        )


def decode(ref: VideoRef, sampling: VideoSampling) -> Video:
    """The sampled frames of a video file (or a frame list), RGB."""
    if isinstance(ref, list):
        return _from_frames(ref, sampling)
    if isinstance(ref, ParquetImage):
        ref = ref.read()
    info = probe(ref)
    check_length(info, sampling)
    n = sampled_count(info.frames, info.fps, sampling)
    targets = np.linspace(0, info.frames - 1, n).round() / info.fps  # seconds of the sampled frames
    frames, times = _decode_at(ref, targets, info.fps)
    if not frames:
        raise VideoError("the video has zero frames")
    frames, times = _even(frames, times)
    return Video(frames, times, sample_fps(n, info))


def sample_fps(n: int, info: VideoInfo) -> float:
    return n / max(info.frames, 1) * info.fps


def _decode_at(ref: str | bytes, targets: np.ndarray, fps: float) -> tuple[list[Image.Image], list[float]]:
    """The first frame at or after each target time, in one pass, seeking over long gaps."""
    frames: list[Image.Image] = []
    times: list[float] = []
    half = 0.5 / fps
    with _open(ref) as container:
        stream = _stream(container)
        decoded = container.decode(stream)
        last = 0.0
        for target in targets:
            if target - last > SEEK_GAP_S:
                container.seek(int(target / stream.time_base), stream=stream)  # the key frame before it
                decoded = container.decode(stream)
            try:
                for frame in decoded:
                    t = float(frame.time) if frame.time is not None else last + 1 / fps
                    last = t
                    if t + half >= target:
                        frames.append(frame.to_image())
                        times.append(t)
                        break
                else:
                    break  # the container held fewer frames than it said
            except av.FFmpegError as e:
                raise VideoError(f"decoding failed at {target:.2f} s ({type(e).__name__}: {e})") from None
    return frames, times


def frame_indices(n: int, sampling: VideoSampling) -> list[int]:
    """Which of a list of `n` frames are kept: all, or `max_frames` of them spread evenly (then an even count
    by repeating the last)."""
    if n <= sampling.max_frames:
        return [*range(n), *([n - 1] * (n % FRAME_FACTOR))]
    keep = np.linspace(0, n - 1, sampled_count(n, sampling.fps, sampling)).round().astype(int).tolist()
    return [*keep, *([keep[-1]] * (len(keep) % FRAME_FACTOR))]


def _from_frames(refs: list, sampling: VideoSampling) -> Video:
    if not refs:
        raise VideoError("the frame list is empty")
    keep = frame_indices(len(refs), sampling)
    frames = []
    for i in keep:
        with open_image(refs[i]) as image:
            frames.append(image.convert("RGB"))
    return Video(frames, [i / sampling.fps for i in keep], sampling.fps * len(set(keep)) / len(refs))


def _even(frames: list[Image.Image], times: list[float]) -> tuple[list[Image.Image], list[float]]:
    """An even number of frames: the last one repeated (as Qwen's processors pad)."""
    if len(frames) % FRAME_FACTOR:
        return [*frames, frames[-1]], [*times, times[-1]]
    return frames, times


def load_videos(refs: list[VideoRef], sampling: VideoSampling) -> list[Video]:
    """Decode a prompt's videos in the decoding pool, each within `sampling.timeout_s` (a timed-out decode is
    abandoned to finish in the background, and this raises)."""
    futures = [_POOL.submit(decode, ref, sampling) for ref in refs]
    out = []
    for i, future in enumerate(futures):
        try:
            out.append(future.result(timeout=sampling.timeout_s or None))
        except FutureTimeout:
            raise VideoError(
                f"video {i} took over data.video_timeout_s={sampling.timeout_s:g} s to decode"
            ) from None
    return out


def is_video_path(ref: Any) -> bool:
    return isinstance(ref, str) and Path(ref.split("?")[0]).suffix.lower() in VIDEO_SUFFIXES
