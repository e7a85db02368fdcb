"""Chat messages + PIL images and videos -> batched model inputs for Qwen2-VL / Qwen2.5-VL / Qwen3-VL.

Why not `AutoProcessor`: in transformers 5 the Qwen-VL processors construct a video processor that
needs torchvision, which has no CPU build on PyPI. The pieces we need are the tokenizer (with its chat
template) and the image processor's PIL backend, which exist everywhere; the processor's only other job
is expanding each `<|image_pad|>` (`<|video_pad|>`) placeholder to the image's (video's) number of tokens,
done here (videos: `models.video`). The same code
runs on GPU machines that do have torchvision, so CPU tests cover the production path.

The pre-flight length check is the point of owning this step: a prompt longer than
`max_prompt_length` (image tokens included) is rejected with the sample id, instead of being truncated
through its image tokens into "Image features and image tokens do not match" hours into a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize

from observe_r1.models.video import (
    Video,
    VideoSampling,
    VideoTiming,
    even_times,
    frame_pixels,
    pair_times,
    process_video,
    seconds_per_grid,
    timestamp_placeholders,
    video_grid,
)

PREFIX_CHARS_PER_TOKEN = 8  # a text this many characters per token of the limit is first tokenised in part
log = logging.getLogger(__name__)
ORIENTATION_TAG = 0x0112  # EXIF: orientations 5-8 swap width and height
META = "observe_r1.json"  # what observe-r1 records about a checkpoint beside its tokenizer
# Image-processor types transformers does not know, and the class they name: Qwen's Qwen2.5-VL repos were
# released with "Qwen2_5_VLImageProcessor" ("Unrecognized image processor", transformers#36193); many
# copies of the models and LoRA adapters saved from them still carry it. It is Qwen2-VL's processor.
RENAMED_IMAGE_PROCESSORS = {"Qwen2_5_VLImageProcessor": Qwen2VLImageProcessorPil}


class PromptError(ValueError):
    """A prompt cannot be encoded (too long, placeholders and images disagree, bad image or video); names the
    sample."""


class PromptTooLong(PromptError):
    """A prompt is longer than `max_prompt_length` tokens (image tokens included)."""


@dataclass
class EncodedPrompt:
    sample_id: str
    input_ids: list[int]
    pixel_values: torch.Tensor | None  # [patches, channels * temporal_patch * patch * patch]
    image_grid_thw: torch.Tensor | None  # [images, 3]
    image_tokens: list[int]  # image tokens per image, in prompt order
    pixel_values_videos: torch.Tensor | None = None  # [patches, channels * 2 * patch * patch]
    video_grid_thw: torch.Tensor | None = None  # [videos, 3]
    video_tokens: list[int] = field(default_factory=list)  # video tokens per video
    second_per_grid: list[float] = field(default_factory=list)  # per video (Qwen2.5-VL's second_per_grid_ts)


class ChatEncoder:
    """Tokenizer + image processor of one checkpoint; encodes prompts, collates batches, decodes outputs.
    A text-only causal LM has no image processor (`image_processor=None`): its prompts may not hold images."""

    def __init__(
        self,
        tokenizer: Any,
        image_processor: Any | None,
        max_prompt_length: int | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        video: VideoSampling | None = None,
        video_timing: VideoTiming = VideoTiming.GRID,
    ):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_prompt_length = max_prompt_length
        size = (
            dict(image_processor.size) if image_processor is not None else {"min_pixels": 0, "max_pixels": 0}
        )
        self.min_pixels: int = min_pixels or size.get("shortest_edge") or size["min_pixels"]
        self.max_pixels: int = max_pixels or size.get("longest_edge") or size["max_pixels"]
        self.merge_size = int(getattr(image_processor, "merge_size", 2))
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video = video or VideoSampling()  # frame sampling and the pixel budget of videos
        self.video_timing = video_timing  # how the model family places frames in time (models.video)
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        # The system prompt (preset or text) the model was trained with; saved beside the tokenizer as
        # observe_r1.json, so `observe-r1 eval` prompts a checkpoint the way it was trained.
        self.system_prompt: str | None = None
        # Tools the prompts list (OpenAI function layout; multi-turn rollouts): through the chat template's
        # `tools=`, or, for a template that ignores it (Qwen2.5-VL's), as text after the system prompt.
        self.tools: list[dict] | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, trust_remote_code: bool = False, **kwargs: Any) -> ChatEncoder:
        """The tokenizer and image processor of a checkpoint folder; its own Python code (`auto_map`) runs only
        with `trust_remote_code` (`remote_code`). Videos are sampled as `video=` says, else as the checkpoint
        was trained (its observe_r1.json), else by the defaults."""
        with remote_code(path, trust_remote_code):
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            processor = load_image_processor(Path(path), trust_remote_code)
        if tokenizer.chat_template is None:  # some checkpoints keep it beside the processor config
            tokenizer.chat_template = _read_chat_template(Path(path))
        config = Path(path) / "config.json"
        model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
        meta = recorded(path)
        kwargs.setdefault("video", VideoSampling(**meta["video"]) if "video" in meta else None)
        encoder = cls(tokenizer, processor, video_timing=VideoTiming.of(model_type), **kwargs)
        encoder.system_prompt = meta.get("system_prompt")
        return encoder

    def save_pretrained(self, out: str | Path) -> None:
        self.tokenizer.save_pretrained(out)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(out)
        meta = {"system_prompt": self.system_prompt, "video": dataclasses.asdict(self.video)}
        (Path(out) / META).write_text(json.dumps(meta) + "\n")

    def _require_images(self, sample_id: str) -> None:
        if self.image_processor is None:
            raise PromptError(f"sample {sample_id}: the prompt has images but the model is text-only")

    # ------------------------------------------------------------ images

    def tokens_per_image(self, width: int, height: int) -> int:
        """Image tokens the processor will produce for a width x height image, without processing it."""
        assert self.image_processor is not None, "text-only model"
        patch = int(self.image_processor.patch_size)
        h, w = smart_resize(height, width, patch * self.merge_size, self.min_pixels, self.max_pixels)
        return (h // patch) * (w // patch) // self.merge_size**2

    def process_images(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.image_processor is not None, "text-only model"
        size = {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}
        out = self.image_processor(images=[as_rgb(im) for im in images], size=size, return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]

    # ------------------------------------------------------------ videos

    def frame_pixels(self, frames: int) -> int:
        """The largest area of one frame of a `frames`-frame video (`data.video_max_pixels`, lowered so the
        video stays within `data.video_total_pixels`)."""
        return frame_pixels(frames, self.min_pixels, self.video.max_pixels, self.video.total_pixels)

    def tokens_per_video(self, frames: int, width: int, height: int) -> int:
        """Video tokens of `frames` sampled frames of width x height, without processing them."""
        assert self.image_processor is not None, "text-only model"
        factor = int(self.image_processor.patch_size) * self.merge_size
        t, h, w = video_grid(frames, width, height, factor, self.min_pixels, self.frame_pixels(frames))
        return t * (h // factor) * (w // factor)

    def process_videos(self, videos: list[Video]) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.image_processor is not None, "text-only model"
        rows, grids = [], []
        for video in videos:
            size = {"shortest_edge": self.min_pixels, "longest_edge": self.frame_pixels(len(video.frames))}
            pixels, grid = process_video(self.image_processor, video, size)
            rows.append(pixels)
            grids.append(grid)
        return torch.cat(rows), torch.tensor(grids, dtype=torch.long)

    def expand_video_tokens(
        self, text: str, counts: list[int], times: list[list[float]], sample_id: str
    ) -> str:
        """Each `<|video_pad|>` -> the video's tokens (Qwen3-VL: a timestamp and a vision span per pair of
        frames, replacing the template's own span around the video)."""
        if self.video_timing != VideoTiming.TEXT:
            return _expand(text, self.video_token, [self.video_token * n for n in counts], "video", sample_id)
        start, end = "<|vision_start|>", "<|vision_end|>"
        text = text.replace(start + self.video_token + end, self.video_token)
        spans = []
        for n, pairs in zip(counts, times, strict=True):
            spans.append(timestamp_placeholders(pairs, n // len(pairs), start, self.video_token, end))
        return _expand(text, self.video_token, spans, "video", sample_id)

    # ------------------------------------------------------------ prompts

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self.tools and not self.template_lists_tools:
            messages = with_tool_list(messages, self.tools)
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, tools=self.tools or None
        )

    @functools.cached_property
    def template_lists_tools(self) -> bool:
        """Whether the chat template renders `tools=` (Qwen2.5's does; Qwen2.5-VL's ignores it)."""
        probe = [{"role": "user", "content": "u"}]
        tool = {"type": "function", "function": {"name": "probe_tool_x", "description": "", "parameters": {}}}
        text = self.tokenizer.apply_chat_template(probe, tokenize=False, tools=[tool])
        return "probe_tool_x" in text

    def expand_image_tokens(self, text: str, tokens_per_image: list[int], sample_id: str = "?") -> str:
        return _expand(
            text, self.image_token, [self.image_token * n for n in tokens_per_image], "image", sample_id
        )

    def prompt_length(
        self,
        messages: list[dict],
        image_sizes: list[tuple[int, int]],
        sample_id: str = "?",
        video_shapes: Sequence[tuple[int, int, int]] = (),
    ) -> int:
        """Token length of the prompt with image and video tokens expanded, from (width, height) of each image
        and (sampled frames, width, height) of each video only."""
        if image_sizes or video_shapes:
            self._require_images(sample_id)
        counts = [self.tokens_per_image(w, h) for w, h in image_sizes]
        text = self.expand_image_tokens(self.render(messages), counts, sample_id)
        frames = [self.tokens_per_video(f, w, h) for f, w, h in video_shapes]
        times = [even_times(f, self.video.fps) for f, _, _ in video_shapes]
        text = self.expand_video_tokens(text, frames, times, sample_id)
        return len(self.token_ids(text, sample_id))

    def token_ids(self, text: str, sample_id: str = "?") -> list[int]:
        """The token ids of a rendered prompt. A text surely longer than `max_prompt_length` is refused before
        it is tokenised whole (tokenising one 20 MB row took 6.5 GB and 72 s): by its bytes against the
        vocabulary's longest token, then by the tokens of a prefix."""
        limit = self.max_prompt_length
        if limit is not None and len(text.encode()) > limit * self.longest_token_bytes:
            raise PromptTooLong(
                f"sample {sample_id}: the prompt is {len(text.encode()):,} bytes, over "
                f"max_prompt_length={limit} tokens even at the vocabulary's longest token"
            )
        if limit is not None and len(text) > limit * PREFIX_CHARS_PER_TOKEN:
            head = self.tokenizer(text[: limit * PREFIX_CHARS_PER_TOKEN], add_special_tokens=False)[
                "input_ids"
            ]
            if len(head) > limit:
                raise PromptTooLong(
                    f"sample {sample_id}: the prompt's first {limit * PREFIX_CHARS_PER_TOKEN:,} "
                    f"characters are already {len(head)} tokens, over max_prompt_length={limit}"
                )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @functools.cached_property
    def longest_token_bytes(self) -> int:
        """Bytes of the longest token of the vocabulary (special tokens included)."""
        return max((len(token.encode()) for token in self.tokenizer.get_vocab()), default=1)

    def encode(
        self,
        messages: list[dict],
        images: Sequence[Image.Image] = (),
        sample_id: str = "?",
        add_generation_prompt: bool = True,
        videos: Sequence[Video] = (),
    ) -> EncodedPrompt:
        images, videos = list(images), list(videos)
        pixel_values = grid = video_pixels = video_grid = None
        counts: list[int] = []
        video_counts: list[int] = []
        if images or videos:
            self._require_images(sample_id)
        try:
            if images:
                pixel_values, grid = self.process_images(images)
                counts = [int(g.prod()) // self.merge_size**2 for g in grid]
            if videos:
                video_pixels, video_grid = self.process_videos(videos)
                video_counts = [int(g.prod()) // self.merge_size**2 for g in video_grid]
        except Exception as e:  # noqa: BLE001 - PIL and the processor raise many types; name the sample
            raise PromptError(f"sample {sample_id}: image processing failed: {e}") from e
        text = self.expand_image_tokens(self.render(messages, add_generation_prompt), counts, sample_id)
        text = self.expand_video_tokens(text, video_counts, [pair_times(v) for v in videos], sample_id)
        ids = self.token_ids(text, sample_id)
        if self.max_prompt_length is not None and len(ids) > self.max_prompt_length:
            kind, lower = (
                ("image and video", "data.video_total_pixels") if videos else ("image", "max_pixels")
            )
            raise PromptTooLong(
                f"sample {sample_id}: prompt is {len(ids)} tokens ({sum(counts) + sum(video_counts)} of them "
                f"{kind} tokens), over max_prompt_length={self.max_prompt_length}; lower {lower} or raise "
                "max_prompt_length"
            )
        seconds = [seconds_per_grid(v) for v in videos]
        return EncodedPrompt(
            sample_id,
            ids,
            pixel_values,
            grid,
            counts,
            pixel_values_videos=video_pixels,
            video_grid_thw=video_grid,
            video_tokens=video_counts,
            second_per_grid=seconds,
        )

    def collate(self, prompts: list[EncodedPrompt], padding_side: str = "left") -> dict[str, torch.Tensor]:
        """Pad to a batch: left padding for generation (the default), right padding for training."""
        batch = self._pad(prompts, padding_side)
        for pixels_key, grid_key, _ in VISUALS:
            pixels = [getattr(p, pixels_key) for p in prompts if getattr(p, pixels_key) is not None]
            if pixels:
                batch[pixels_key] = torch.cat(pixels)
                batch[grid_key] = torch.cat(
                    [getattr(p, grid_key) for p in prompts if getattr(p, grid_key) is not None]
                )
        return batch | self._video_seconds(prompts)

    def _video_seconds(self, rows: list[EncodedPrompt]) -> dict[str, torch.Tensor]:
        """Qwen2.5-VL's `second_per_grid_ts` of the batch's videos (other families place frames otherwise)."""
        seconds = [s for p in rows for s in p.second_per_grid]
        if not seconds or self.video_timing != VideoTiming.GRID:
            return {}
        return {"second_per_grid_ts": torch.tensor(seconds, dtype=torch.float32)}

    def collate_shared(
        self, prompts: list[EncodedPrompt], owners: list[int], padding_side: str = "left"
    ) -> dict[str, torch.Tensor]:
        """`collate` of `prompts[o] for o in owners`, where several rows answer one prompt (the n responses of
        a group) and share its images and videos: `pixel_values` holds each distinct prompt's images once,
        `image_grid_thw_distinct` their grids, and `image_source` says which of them fills each image of the
        batch, in order (`models.policy.encode_visuals` encodes them once and hands the features over);
        videos the same under `pixel_values_videos`, `video_grid_thw_distinct`, `video_source`."""
        rows = [prompts[o] for o in owners]
        batch = self._pad(rows, padding_side)
        for pixels_key, grid_key, kind in VISUALS:
            batch |= _shared(prompts, owners, pixels_key, grid_key, kind)
        return batch | self._video_seconds(rows)

    def _pad(self, prompts: list[EncodedPrompt], padding_side: str) -> dict[str, torch.Tensor]:
        width = max(len(p.input_ids) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            span = (
                slice(width - len(p.input_ids), width)
                if padding_side == "left"
                else slice(0, len(p.input_ids))
            )
            ids[i, span] = torch.tensor(p.input_ids, dtype=torch.long)
            mask[i, span] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if self.image_processor is not None:
            # Which tokens are image (1) and video (2) tokens: without it transformers 5 gives them 1D text
            # positions instead of Qwen-VL's 3D (time, row, column) RoPE positions, silently (its processor
            # adds it).
            batch["mm_token_type_ids"] = self.token_types(ids)
        return batch

    def token_types(self, ids: torch.Tensor) -> torch.Tensor:
        """0 text, 1 image, 2 video, per token (`mm_token_type_ids`)."""
        return (ids == self.image_token_id).long() + 2 * (ids == self.video_token_id).long()

    def decode(self, ids: torch.Tensor | list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens)


VISUALS = (("pixel_values", "image_grid_thw", "image"), ("pixel_values_videos", "video_grid_thw", "video"))


def _shared(
    prompts: list[EncodedPrompt], owners: list[int], pixels_key: str, grid_key: str, kind: str
) -> dict[str, torch.Tensor]:
    """One modality of `collate_shared`: each distinct prompt's pixels once, the grid of every row's items,
    the distinct grids and which distinct item fills each item of the batch."""
    slot: dict[int, int] = {}  # a prompt's place among the distinct ones with this modality
    pixels: list[torch.Tensor] = []
    grids: list[torch.Tensor] = []
    for o in dict.fromkeys(owners):
        p = prompts[o]
        if getattr(p, pixels_key) is not None and getattr(p, grid_key) is not None:
            slot[o] = len(grids)
            pixels.append(getattr(p, pixels_key))
            grids.append(getattr(p, grid_key))
    if not grids:
        return {}
    start = [0, *accumulate(len(g) for g in grids)]
    return {
        grid_key: torch.cat([grids[slot[o]] for o in owners if o in slot]),
        pixels_key: torch.cat(pixels),
        f"{grid_key}_distinct": torch.cat(grids),
        f"{kind}_source": torch.tensor(
            [start[slot[o]] + k for o in owners if o in slot for k in range(len(grids[slot[o]]))]
        ),
    }


def _expand(text: str, token: str, spans: list[str], kind: str, sample_id: str) -> str:
    """Each `token` placeholder of `text` replaced by its span, in order; the counts must agree."""
    pieces = text.split(token)
    if len(pieces) - 1 != len(spans):
        raise PromptError(
            f"sample {sample_id}: the prompt has {len(pieces) - 1} {kind} placeholder(s) but {len(spans)} {kind}(s)"
        )
    out = [pieces[0]]
    for span, piece in zip(spans, pieces[1:], strict=True):
        out += [span, piece]
    return "".join(out)


TOOL_LIST = """

# Tools

You may call one or more functions. Their signatures:
{tools}
To call one, write <tool_call>{{"name": <function-name>, "arguments": <args-json-object>}}</tool_call>; its result
comes back in the next turn."""


def with_tool_list(messages: list[dict], tools: list[dict]) -> list[dict]:
    """The messages with the tools described after the system prompt (a system message added if none), for
    chat templates that do not render `tools=` themselves; in Qwen2.5's words."""
    listing = TOOL_LIST.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        return [{**messages[0], "content": messages[0]["content"] + listing}, *messages[1:]]
    return [{"role": "system", "content": listing.strip()}, *messages]


def as_rgb(image: Image.Image) -> Image.Image:
    """The image as the model sees it, in 8-bit RGB: turned upright by its EXIF orientation (a phone photo
    stored sideways), 16-bit and 32-bit grey scaled to 8 bits (PIL's own conversion clips them: white), float
    images in [0, 1] scaled, and transparency composited onto white (as transformers' `convert_to_rgb` does)."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 1 / 257 if image.mode.startswith("I") else (255 if values.max(initial=0) <= 1 else 1)
        image = Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8))  # 2-D uint8: mode L
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) once turned upright by its EXIF orientation (`as_rgb`), without converting it."""
    width, height = image.size
    return (height, width) if image.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8) else (width, height)


def load_image_processor(path: Path, trust_remote_code: bool = False) -> Any | None:
    """The checkpoint's image processor with its PIL backend (no torchvision); None for a text-only LM."""
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return None
    renamed = RENAMED_IMAGE_PROCESSORS.get(json.loads(file.read_text()).get("image_processor_type"))
    if renamed is not None:
        return renamed.from_pretrained(path)
    return AutoImageProcessor.from_pretrained(path, backend="pil", trust_remote_code=trust_remote_code)


@contextlib.contextmanager
def remote_code(path: str | Path, trust: bool) -> Iterator[None]:
    """Around loading from a checkpoint folder, with transformers' `trust_remote_code` always given as
    `trust` (never None, which makes transformers ask "run the custom code? [y/N]" in a terminal, where a
    progress bar hid the question and answering y ran the file). Refused, it is one clear error; allowed
    (`model.trust_remote_code: true`), the log says which files may run."""
    if trust:
        files = sorted(p.name for p in Path(path).glob("*.py"))
        log.warning(
            "model.trust_remote_code: transformers may run the Python code of %s (%s)",
            path,
            ", ".join(files) or "code named by its auto_map",
        )
    try:
        yield
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise ValueError(
            f"{path} needs its own Python code to load (an `auto_map` in its config); observe-r1 "
            "runs code from a model folder only with model.trust_remote_code: true (eval and plan: "
            "--trust-remote-code)"
        ) from None


def recorded(checkpoint: str | Path) -> dict[str, Any]:
    """What a checkpoint's observe_r1.json records: the system prompt it was trained with, its video sampling."""
    meta = Path(checkpoint) / META
    return json.loads(meta.read_text()) if meta.is_file() else {}


def recorded_system_prompt(checkpoint: str | Path) -> str | None:
    """The system prompt a checkpoint was trained with (None if not recorded)."""
    return recorded(checkpoint).get("system_prompt")


def _read_chat_template(path: Path) -> str | None:
    for name in ("chat_template.jinja", "chat_template.json"):
        f = path / name
        if f.exists():
            return json.loads(f.read_text())["chat_template"] if f.suffix == ".json" else f.read_text()
    return None
