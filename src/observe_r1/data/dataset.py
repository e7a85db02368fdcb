"""Load prompts from jsonl / parquet in the peers' row layouts into one typed `Sample`, validating every row.

Row formats (detected per row, first match wins):
  native      `messages`: a chat list; image parts `{"type": "image", "image": "path"}` (paths relative to
              the file), or `{"type": "image"}` filled in order from a top-level `images` list.
  observe-r1  `message`: a JSON *string* of such a chat list, image URIs like `file:///abs/x.jpg`
              (the original Observe-R1 / LMM-R1 files).
  verl        `prompt`: a chat list whose text holds `<image>` placeholders, `images`, the gold in
              `reward_model.ground_truth` (verl's preprocessed parquet; `data_source`, `extra_info` kept).
  trl         `prompt`: a chat list (image parts `{"type": "image"}`) or a string, images in `images` or
              `image`, the gold in `answer`, `solution` or `ground_truth` (`<answer>` tags stripped).
  easyr1      `problem`: text with `<image>` placeholders, images in `images` or `image`.
Images may be paths, `file://` or `data:` URIs, or parquet `{"bytes", "path"}` structs. A prompt without
any image placeholder gets its images at the start of the first user message (TRL's convention). Every
column other than the prompt, the images and `answer` is kept in `Sample.metadata` (level, skill,
solution, data_source, ...) and reaches reward functions.

A bad row never crashes a run later: it becomes a `Problem` naming the file, the line and the kind.
`observe-r1 data check` lists them all; training loads skip them with a count in the log.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from observe_r1.data.preference import explicit, is_preference
from observe_r1.data.prompts import with_system_prompt
from observe_r1.data.sources import MALFORMED, ParquetImage, RowError, open_image, resolve
from observe_r1.data.video import (
    Video,
    VideoError,
    VideoRef,
    VideoSampling,
    check_length,
    frame_indices,
    load_videos,
    probe,
    sampled_count,
)
from observe_r1.models.inputs import PromptError, PromptTooLong, as_rgb, oriented_size

log = logging.getLogger(__name__)

ImageRef = (
    str | bytes | ParquetImage
)  # a path, encoded bytes, or an image read from its parquet file when used

# The kinds of bad row, as reported by `data check` (and MALFORMED, from observe_r1.data.sources).
UNKNOWN_FORMAT = "unknown_format"
WRONG_TYPE = "wrong_type"
EMPTY_QUESTION = "empty_question"
MISSING_ANSWER = "missing_answer"
MISSING_IMAGE = "missing_image"
REMOTE_IMAGE = "remote_image"
UNREADABLE_IMAGE = "unreadable_image"
IMAGE_COUNT = "image_count_mismatch"
BAD_SCORE = "bad_ladder_score"
TOO_LONG = "prompt_too_long"
DUPLICATE_ID = "duplicate_id"
UNREADABLE_VIDEO = "unreadable_video"  # missing, corrupt, no frames, an unknown codec
VIDEO_TOO_LONG = "video_too_long"

CONSUMED = {"id", "messages", "message", "prompt", "problem", "images", "image", "videos", "video", "answer"}
PLACEHOLDER_RE = re.compile(r"(<image>|<video>)")  # EasyR1's and verl's placeholders in prompt text
GOLD_COLUMNS = ("answer", "solution", "ground_truth")  # the first one present is the gold
ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.S)


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    sample_id: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        sid = f" [{self.sample_id}]" if self.sample_id else ""
        return f"{self.file}:{self.line}{sid} {self.kind}: {self.message}"


@dataclass
class Sample:
    id: str
    messages: list[dict]  # chat; image parts are {"type": "image"}, in the order of `images` (videos: same)
    images: list[ImageRef]
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)
    format: str = "native"
    source: str = ""  # file:line
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height), filled by validation
    videos: list[VideoRef] = field(default_factory=list)
    video_shapes: list[tuple[int, int, int]] = field(
        default_factory=list
    )  # (frames, width, height): validation

    def load_images(self) -> list[Image.Image]:
        """The images as the model sees them (`models.inputs.as_rgb`: upright, 8-bit RGB)."""
        return [as_rgb(open_image(ref)) for ref in self.images]

    def load_videos(self, sampling: VideoSampling) -> list[Video]:
        """The videos' sampled frames (`data.video`), decoded in the bounded pool."""
        return load_videos(self.videos, sampling) if self.videos else []

    @property
    def question(self) -> str:
        return question_text(self.messages)


@dataclass
class LoadResult:
    samples: list[Sample]
    problems: list[Problem]
    rows: int
    formats: Counter = field(default_factory=Counter)  # rows per detected layout, good or bad

    @property
    def images(self) -> int:
        return sum(len(s.images) for s in self.samples)

    @property
    def videos(self) -> int:
        return sum(len(s.videos) for s in self.samples)


# ------------------------------------------------------------------ parsing rows


def parse_row(row: dict, base_dir: Path, default_id: str) -> Sample:
    preference = is_preference(row)  # a reward model's training pair: no gold needed
    if preference:
        row = explicit(row)
    fmt, messages = _messages(row)
    sid = row.get("id", default_id)
    if not isinstance(sid, str | int) or isinstance(sid, bool):
        raise RowError(WRONG_TYPE, f"`id` must be a string or integer, got {type(sid).__name__}")
    messages, images, videos = _split_visuals(
        _check_messages(messages), _listed(row, "images", "image"), _listed(row, "videos", "video"), base_dir
    )
    if not question_text(messages).strip():
        raise RowError(EMPTY_QUESTION, "the user messages have no text")
    _check_ladder_scores(row)
    return Sample(
        id=str(sid),
        messages=messages,
        images=images,
        videos=videos,
        answer="" if preference and not _has_gold(row, fmt) else _answer(row, fmt),
        metadata={k: v for k, v in row.items() if k not in CONSUMED},
        format=fmt,
    )


def detect_format(row: dict) -> str | None:
    """The row layout, from its columns (see the module docstring); None if none fits."""
    if "prompt" in row:
        return "verl" if "reward_model" in row else "trl"
    keys = {"messages": "native", "message": "observe-r1", "problem": "easyr1"}
    return next((fmt for key, fmt in keys.items() if key in row), None)


def _messages(row: dict) -> tuple[str, Any]:
    """(format, chat list) of a row."""
    fmt = detect_format(row)
    if fmt == "native":
        return fmt, row["messages"]
    if fmt == "observe-r1":
        if not isinstance(row["message"], str):
            raise RowError(
                WRONG_TYPE, f"`message` must be a JSON string, got {type(row['message']).__name__}"
            )
        try:
            return fmt, json.loads(row["message"])
        except (ValueError, RecursionError) as e:
            raise RowError(MALFORMED, f"`message` is not valid JSON ({getattr(e, 'msg', e)})") from None
    if fmt in ("verl", "trl"):
        prompt = row["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        return fmt, _placeholders_to_parts(_check_messages(prompt))
    if fmt == "easyr1":
        if not isinstance(row["problem"], str):
            raise RowError(WRONG_TYPE, f"`problem` must be a string, got {type(row['problem']).__name__}")
        return fmt, _placeholders_to_parts([{"role": "user", "content": row["problem"]}])
    raise RowError(
        UNKNOWN_FORMAT, f"no `messages`, `message`, `prompt` or `problem` column (columns: {sorted(row)})"
    )


def _placeholders_to_parts(messages: list[dict]) -> list[dict]:
    """Text with `<image>` / `<video>` placeholders (EasyR1, verl) -> content parts; other messages unchanged."""
    out = []
    for m in messages:
        content = m["content"]
        if not isinstance(content, str) or not PLACEHOLDER_RE.search(content):
            out.append(m)
            continue
        parts = [
            {"type": piece[1:-1]} if PLACEHOLDER_RE.fullmatch(piece) else {"type": "text", "text": piece}
            for piece in PLACEHOLDER_RE.split(content)
            if piece
        ]
        out.append({**m, "content": parts})
    return out


def _check_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise RowError(WRONG_TYPE, "messages must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise RowError(WRONG_TYPE, f"message {i} needs a role of system, user or assistant")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in content):
                raise RowError(WRONG_TYPE, f"message {i}: every content part needs a `type`")
            for p in content:
                if p["type"] == "text" and not isinstance(p.get("text"), str):
                    raise RowError(
                        WRONG_TYPE, f"message {i}: a text part's `text` must be a string, got "
                        f"{type(p.get('text')).__name__}"
                    )  # fmt: skip
        elif not isinstance(content, str):
            raise RowError(WRONG_TYPE, f"message {i}: content must be a string or a list of parts")
    if not any(m["role"] == "user" for m in messages):
        raise RowError(EMPTY_QUESTION, "no user message")
    return messages


def _listed(row: dict, many: str, one: str) -> list | None:
    """The row's `images` (`videos`) list, or its single `image` (`video`) column as a list of one."""
    if row.get(many) is not None:
        if not isinstance(row[many], list):
            raise RowError(WRONG_TYPE, f"`{many}` must be a list, got {type(row[many]).__name__}")
        return row[many]
    value = row.get(one)
    if value is None:
        return None
    return value if isinstance(value, list) and one == "image" else [value]


def _split_visuals(
    messages: list[dict], listed_images: list | None, listed_videos: list | None, base_dir: Path
) -> tuple[list[dict], list[ImageRef], list[VideoRef]]:
    """Move image and video references out of the message parts into one ordered list each; parts become
    {"type": "image"} / {"type": "video"}. A chat without any part of a kind gets that kind's listed
    references at the start of its first user message (videos before images)."""
    queues = {"image": list(listed_images or []), "video": list(listed_videos or [])}
    for kind in ("image", "video"):
        if queues[kind] and not _has_part(messages, kind):
            first = next(i for i, m in enumerate(messages) if m["role"] == "user")
            content = messages[first]["content"]
            text = [{"type": "text", "text": content}] if isinstance(content, str) else content
            messages = [*messages]
            messages[first] = {**messages[first], "content": [{"type": kind} for _ in queues[kind]] + text}
    found: dict[str, list] = {"image": [], "video": []}
    out = []
    for m in messages:
        if isinstance(m["content"], str):
            out.append(m)
            continue
        parts = []
        for p in m["content"]:
            found_kind = _kind(p)
            if found_kind is None:
                parts.append(p)
                continue
            kind = found_kind
            ref = _part_ref(p, kind)
            if ref is None:
                if not queues[kind]:
                    listed = listed_images if kind == "image" else listed_videos
                    raise RowError(
                        IMAGE_COUNT, f"more {kind} placeholders than {kind}s ({len(listed or [])} listed)"
                    )
                ref = queues[kind].pop(0)
            found[kind].append(_image_ref(ref, base_dir) if kind == "image" else _video_ref(ref, base_dir))
            parts.append({"type": kind})
        out.append({**m, "content": parts})
    for kind, queue in queues.items():
        if queue:
            n = len(found[kind])
            raise RowError(IMAGE_COUNT, f"{n + len(queue)} {kind}s but {n} {kind} placeholders")
    return out, found["image"], found["video"]


def _has_part(messages: list[dict], kind: str) -> bool:
    return any(_kind(p) == kind for m in messages if isinstance(m["content"], list) for p in m["content"])


def _kind(part: dict) -> str | None:
    """ "image" or "video" for a visual content part (`image`, `image_url`, `video`, `video_url`), else None."""
    kind = part["type"].removesuffix("_url")
    return kind if kind in ("image", "video") else None


def _part_ref(part: dict, kind: str) -> Any:
    """The image (video) a content part names itself, if any: `image`, or `image_url` as a string or
    {"url": ...} (`video`, `video_url`)."""
    if part["type"] == kind:
        return part.get(kind)
    url = part.get(f"{kind}_url")
    return url.get("url") if isinstance(url, dict) else url


def _image_ref(ref: Any, base_dir: Path, kind: str = "image") -> ImageRef:
    """An image's reference (a video file's: `kind="video"`, named so in the errors)."""
    if isinstance(ref, ParquetImage):
        return ref
    if isinstance(ref, Image.Image):  # rows built in Python
        buffer = io.BytesIO()
        ref.save(buffer, format="PNG")
        return buffer.getvalue()
    if isinstance(ref, dict):  # parquet / HF datasets struct
        if ref.get("bytes"):
            return bytes(ref["bytes"])
        ref = ref.get("path")
    if isinstance(ref, bytes):
        return ref
    if not isinstance(ref, str) or not ref:
        article = "an" if kind == "image" else "a"
        raise RowError(WRONG_TYPE, f"{article} {kind} must be a path string, got {type(ref).__name__}")
    if ref.startswith("data:"):
        header, comma, data = ref.partition(",")
        try:
            if not comma or not header.endswith(";base64"):
                raise ValueError("expected data:<type>;base64,<data>")
            return base64.b64decode(data, validate=True)
        except (ValueError, binascii.Error) as e:
            unreadable = UNREADABLE_IMAGE if kind == "image" else UNREADABLE_VIDEO
            raise RowError(unreadable, f"malformed data: URI ({e})") from None
    if ref.startswith(("http://", "https://")):
        raise RowError(REMOTE_IMAGE, f"remote {kind} {ref} is not fetched; download it and use a local path")
    path = Path(ref.removeprefix("file://"))
    return str(path if path.is_absolute() else base_dir / path)


def _video_ref(ref: Any, base_dir: Path) -> VideoRef:
    """A video file's reference (as an image's: a path, bytes, a data: URI, a parquet struct), or a list of
    frame image references."""
    if isinstance(ref, list | tuple):
        if not ref:
            raise RowError(UNREADABLE_VIDEO, "a video's frame list is empty")
        return [_image_ref(frame, base_dir) for frame in ref]
    return _image_ref(ref, base_dir, "video")


def _has_gold(row: dict, fmt: str) -> bool:
    return (fmt == "verl" and "reward_model" in row) or any(row.get(c) is not None for c in GOLD_COLUMNS)


def _answer(row: dict, fmt: str) -> str:
    """The gold: verl's `reward_model.ground_truth`, else the first of `answer`, `solution`, `ground_truth`."""
    if fmt == "verl" and "answer" not in row:  # (an `answer` here came from data.answer_key)
        reward_model = row["reward_model"]
        name, answer = "reward_model.ground_truth", reward_model.get("ground_truth") if isinstance(
            reward_model, dict) else None  # fmt: skip
    else:
        name = next((c for c in GOLD_COLUMNS if row.get(c) is not None), "answer")
        answer = row.get(name)
    if answer is None:
        looked = "`reward_model.ground_truth`" if fmt == "verl" else ", ".join(f"`{c}`" for c in GOLD_COLUMNS)
        raise RowError(MISSING_ANSWER, f"no gold answer (looked for {looked})")
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise RowError(WRONG_TYPE, f"`{name}` must be a string or number, got {type(answer).__name__}")
    if isinstance(answer, float) and not math.isfinite(answer):
        raise RowError(MISSING_ANSWER, f"`{name}` is {answer}, not an answer")
    answer = str(answer)
    tagged = ANSWER_TAG_RE.findall(answer)
    if tagged:  # TRL's solutions hold "<answer> 60 </answer>"
        answer = tagged[-1]
    if not answer.strip():
        raise RowError(MISSING_ANSWER, f"`{name}` is empty")
    return answer.strip()


def _check_ladder_scores(row: dict) -> None:
    """A NeuraLadder row's `difficulty` is a share of wrong responses and `complexity` a mean length."""
    for key, high in (("difficulty", 1.0), ("complexity", math.inf)):
        if key not in row or row[key] is None:
            continue
        value = row[key]
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not 0 <= value <= high:
            raise RowError(BAD_SCORE, f"`{key}` must be a number in [0, {high:g}], got {value!r}")


def question_text(messages: list[dict]) -> str:
    texts = []
    for m in messages:
        if m["role"] != "user":
            continue
        content = m["content"]
        texts += (
            [content]
            if isinstance(content, str)
            else [p.get("text", "") for p in content if p["type"] == "text"]
        )
    return "\n".join(t for t in texts if t)


# ------------------------------------------------------------------ validation


def check_images(sample: Sample) -> None:
    """Decode every image fully (a truncated file fails here, not at step 5,000); record the sizes (upright,
    by the EXIF orientation: what the prompt's image tokens are counted from)."""
    sample.image_sizes = [decoded_size(ref, f"image {i}") for i, ref in enumerate(sample.images)]


def decoded_size(ref: ImageRef, what: str) -> tuple[int, int]:
    """(width, height) of an image once turned upright, after decoding it fully."""
    if isinstance(ref, str) and not Path(ref).is_file():
        raise RowError(MISSING_IMAGE, f"{what} not found: {ref}")
    try:
        with open_image(ref) as im:
            im.load()
            return oriented_size(im)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise RowError(UNREADABLE_IMAGE, f"{what} {_where(ref)} cannot be decoded: {e}") from None


def _where(ref: ImageRef) -> str:
    """An image reference as an error names it: its path, its parquet row, or its size in bytes."""
    if isinstance(ref, str):
        return ref
    return f"({ref.path} row {ref.row + 1})" if isinstance(ref, ParquetImage) else f"({len(ref)} bytes)"


def check_videos(sample: Sample, sampling: VideoSampling) -> None:
    """Open every video and decode its first frame (a frame list: every frame); refuse one too long; record
    (frames sampled, width, height), what the prompt's video tokens are counted from."""
    shapes = []
    for i, ref in enumerate(sample.videos):
        if isinstance(ref, list):
            sizes = [decoded_size(frame, f"video {i} frame {k}") for k, frame in enumerate(ref)]
            shapes.append((len(frame_indices(len(ref), sampling)), *sizes[0]))
            continue
        try:
            if isinstance(ref, str) and not Path(ref).is_file():
                raise VideoError(f"not found: {ref}")
            info = probe(ref.read() if isinstance(ref, ParquetImage) else ref)
            check_length(info, sampling)
        except VideoError as e:
            kind = VIDEO_TOO_LONG if "video_max_seconds" in str(e) else UNREADABLE_VIDEO
            raise RowError(kind, f"video {i}: {e}") from None
        shapes.append((sampled_count(info.frames, info.fps, sampling), info.width, info.height))
    sample.video_shapes = shapes


def check_prompt_length(sample: Sample, encoder: Any, system_prompt: str = "") -> None:
    messages = with_system_prompt(sample.messages, system_prompt)
    try:
        n = encoder.prompt_length(messages, sample.image_sizes, sample.id, sample.video_shapes)
    except PromptTooLong as e:
        raise RowError(TOO_LONG, str(e)) from None
    except PromptError as e:
        raise RowError(IMAGE_COUNT, str(e)) from None
    except ValueError as e:  # e.g. an aspect ratio the image processor refuses
        raise RowError(UNREADABLE_IMAGE, str(e)) from None
    if encoder.max_prompt_length is not None and n > encoder.max_prompt_length:
        raise RowError(
            TOO_LONG,
            f"prompt is {n} tokens with image tokens, over max_prompt_length={encoder.max_prompt_length}",
        )


@dataclass(frozen=True)
class Columns:
    """Which columns hold the prompt, the gold and the images (EasyR1's data keys), when the layout's own names
    are not the ones used; and where relative image paths live. "" = the layout's default."""

    prompt_key: str = ""  # a string is read as EasyR1's `problem`, a chat list as TRL's `prompt`
    answer_key: str = ""
    image_key: str = ""
    image_dir: str = ""  # relative image paths are found here instead of next to the data file

    @classmethod
    def of(cls, data_cfg: Any) -> Columns:
        return cls(data_cfg.prompt_key, data_cfg.answer_key, data_cfg.image_key, data_cfg.image_dir)

    def apply(self, row: dict) -> dict:
        """The row with the mapped columns under the names the layouts read (the gold's keeps its own too)."""
        row = dict(row)
        if self.prompt_key:
            if self.prompt_key not in row:
                raise RowError(
                    UNKNOWN_FORMAT, f"no `{self.prompt_key}` column (data.prompt_key; columns: {sorted(row)})"
                )
            prompt = row.pop(self.prompt_key)
            for key in ("messages", "message", "prompt", "problem"):
                row.pop(key, None)
            row["problem" if isinstance(prompt, str) else "prompt"] = prompt
        if self.answer_key:  # a dotted key reads a nested one: reward_model.ground_truth
            value: Any = row
            for part in self.answer_key.split("."):
                if not isinstance(value, dict) or part not in value:
                    raise RowError(
                        MISSING_ANSWER, f"no `{self.answer_key}` (data.answer_key; columns: {sorted(row)})"
                    )
                value = value[part]
            row["answer"] = value
        if self.image_key:
            image = row.pop(self.image_key, None)
            row.pop("image", None)
            row["images"] = image if isinstance(image, list) or image is None else [image]
        return row


def load_dataset(
    data: Any,
    encoder: Any = None,
    system_prompt: str = "",
    check_image_files: bool = True,
    on_row: Callable[[], None] | None = None,
    columns: Columns = Columns(),
    video: VideoSampling | None = None,
) -> LoadResult:
    """Parse and validate every row of every source (observe_r1.data.sources: files, globs, folders, DIR@split,
    a list of dicts, a datasets.Dataset). Nothing raises for a bad row: it becomes a Problem. Videos are
    sampled as `video` says (default: the encoder's `data.video_*`)."""
    video = video or (encoder.video if encoder is not None else VideoSampling())
    samples: list[Sample] = []
    problems: list[Problem] = []
    formats: Counter[str] = Counter()
    seen: set[str] = set()
    rows = 0
    for source in resolve(data):
        base_dir = Path(columns.image_dir) if columns.image_dir else source.base_dir
        for line, row in source.read():
            rows += 1
            sid = None
            try:
                if isinstance(row, RowError):
                    raise row
                row = columns.apply(row)
                if fmt := detect_format(row):
                    formats[fmt] += 1
                if isinstance(row.get("id"), str | int):  # named in problems found while parsing
                    sid = str(row["id"])
                sample = parse_row(row, base_dir, default_id=f"{Path(source.name).stem}:{line}")
                sid = sample.id
                if sid in seen:
                    raise RowError(DUPLICATE_ID, f"id {sid!r} appeared earlier")
                if check_image_files:
                    check_images(sample)
                    check_videos(sample, video)
                if encoder is not None:
                    check_prompt_length(sample, encoder, system_prompt)
                sample.source = f"{source.name}:{line}"
                seen.add(sid)
                samples.append(sample)
            except RowError as e:
                problems.append(Problem(source.name, line, sid, e.kind, str(e)))
            except Exception as e:  # noqa: BLE001 - one row's surprise must not abort the file
                problems.append(Problem(source.name, line, sid, MALFORMED, f"{type(e).__name__}: {e}"))
            if on_row is not None:
                on_row()
    return LoadResult(samples, problems, rows, formats)


def load_samples(
    data: Any,
    encoder: Any = None,
    system_prompt: str = "",
    max_bad_row_fraction: float = 0.5,
    columns: Columns = Columns(),
) -> list[Sample]:
    """For training: bad rows are skipped and counted in the log; a mostly-bad dataset is refused."""
    sources = resolve(data)
    result = load_dataset(sources, encoder, system_prompt, columns=columns)
    if result.problems:
        kinds = Counter(p.kind for p in result.problems)
        log.warning(
            "skipped %d of %d rows (%s); first: %s; run `observe-r1 data check` for the full list",
            len(result.problems),
            result.rows,
            ", ".join(f"{k}: {n}" for k, n in kinds.most_common()),
            result.problems[0],
        )
    names = ", ".join(s.name for s in sources)
    if not result.rows:
        raise ValueError(
            f"{names}: no rows (an empty file; a ladder is empty when every item was too hard for the "
            "model that scored it: see its .summary.md)"
        )
    if not result.samples or len(result.problems) > max_bad_row_fraction * result.rows:
        raise ValueError(
            f"{len(result.problems)} of {result.rows} rows in {names} are bad (limit data.max_bad_row_fraction="
            f"{max_bad_row_fraction}); run `observe-r1 data check` to see them"
        )
    return result.samples


def to_native_row(sample: Sample, image_dir: Path) -> dict[str, Any]:
    """The sample as a native row (image and video paths absolute; image and video bytes written to
    `image_dir`), with its metadata columns; loading the row back gives the same sample."""
    stem = image_dir / sample.id.replace("/", "_")
    images = [_file_of(ref, f"{stem}-{i}.png") for i, ref in enumerate(sample.images)]
    videos = [
        [_file_of(f, f"{stem}-v{i}-{k}.png") for k, f in enumerate(ref)]
        if isinstance(ref, list)
        else _file_of(ref, f"{stem}-v{i}.video")
        for i, ref in enumerate(sample.videos)
    ]
    queues = {"image": iter(images), "video": iter(videos)}
    messages = [
        m if isinstance(m["content"], str)
        else {**m, "content": [{**p, p["type"]: next(queues[p["type"]])} if p["type"] in queues else p
                               for p in m["content"]]}
        for m in sample.messages
    ]  # fmt: skip
    return {"id": sample.id, "messages": messages, "answer": sample.answer, **sample.metadata}


def _file_of(ref: ImageRef, path: str) -> str:
    """The absolute path of an image or video file; bytes (or a parquet file's) written to `path` first."""
    if not isinstance(ref, str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".png"):
            open_image(ref).save(path)
        else:
            Path(path).write_bytes(ref.read() if isinstance(ref, ParquetImage) else ref)
        ref = path
    return str(Path(ref).resolve())
