"""Load prompts from jsonl / parquet in three row formats into one typed `Sample`, validating every row.

Row formats (detected per row):
  native      `messages`: a chat list; image parts `{"type": "image", "image": "path"}` (paths relative to
              the file), or `{"type": "image"}` filled in order from a top-level `images` list.
  observe-r1  `message`: a JSON *string* of such a chat list, image URIs like `file:///abs/x.jpg`
              (the original Observe-R1 / LMM-R1 files).
  easyr1      `problem`: text with `<image>` placeholders, `images`: a list of paths (or parquet
              `{"bytes", "path"}` structs).
All three need `answer`; every other column is kept in `Sample.metadata` (level, skill, solution, ...).

A bad row never crashes a run later: it becomes a `Problem` naming the file, the line and the kind.
`observe-r1 data check` lists them all; training loads skip them with a count in the log.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from observe_r1.data.prompts import with_system_prompt

log = logging.getLogger(__name__)

ImageRef = str | bytes  # a path, or the encoded file's bytes (parquet)

# The kinds of bad row, as reported by `data check`.
MALFORMED = "malformed_row"
UNKNOWN_FORMAT = "unknown_format"
WRONG_TYPE = "wrong_type"
EMPTY_QUESTION = "empty_question"
MISSING_ANSWER = "missing_answer"
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
IMAGE_COUNT = "image_count_mismatch"
TOO_LONG = "prompt_too_long"
DUPLICATE_ID = "duplicate_id"

CONSUMED = {"id", "messages", "message", "problem", "images", "answer"}


class RowError(ValueError):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


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
    messages: list[dict]  # chat; image parts are {"type": "image"}, in the order of `images`
    images: list[ImageRef]
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)
    format: str = "native"
    source: str = ""  # file:line
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height), filled by validation

    def load_images(self) -> list[Image.Image]:
        return [open_image(ref).convert("RGB") for ref in self.images]

    @property
    def question(self) -> str:
        return question_text(self.messages)


@dataclass
class LoadResult:
    samples: list[Sample]
    problems: list[Problem]
    rows: int
    formats: Counter = field(default_factory=Counter)


# ------------------------------------------------------------------ reading files


def read_rows(path: Path) -> Iterator[tuple[int, dict | RowError]]:
    """(line or row number, row) pairs; a line that is not a JSON object yields a RowError instead."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError("reading parquet needs pyarrow: pip install 'observe-r1[parquet]'") from e
        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield i, row
        return
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield i, RowError(MALFORMED, f"not valid JSON ({e.msg} at column {e.colno})")
                continue
            yield i, row if isinstance(row, dict) else RowError(MALFORMED, "a row must be a JSON object")


# ------------------------------------------------------------------ parsing rows


def parse_row(row: dict, base_dir: Path, default_id: str) -> Sample:
    if "messages" in row:
        fmt, messages = "native", row["messages"]
    elif "message" in row:
        fmt = "observe-r1"
        if not isinstance(row["message"], str):
            raise RowError(
                WRONG_TYPE, f"`message` must be a JSON string, got {type(row['message']).__name__}"
            )
        try:
            messages = json.loads(row["message"])
        except json.JSONDecodeError as e:
            raise RowError(MALFORMED, f"`message` is not valid JSON ({e.msg})") from None
    elif "problem" in row:
        fmt, messages = "easyr1", _easyr1_messages(row)
    else:
        raise RowError(
            UNKNOWN_FORMAT, f"no `messages`, `message` or `problem` column (columns: {sorted(row)})"
        )
    sid = row.get("id", default_id)
    if not isinstance(sid, str | int) or isinstance(sid, bool):
        raise RowError(WRONG_TYPE, f"`id` must be a string or integer, got {type(sid).__name__}")
    messages, images = _split_images(_check_messages(messages), row.get("images"), base_dir)
    if not question_text(messages).strip():
        raise RowError(EMPTY_QUESTION, "the user messages have no text")
    return Sample(
        id=str(sid),
        messages=messages,
        images=images,
        answer=_answer(row),
        metadata={k: v for k, v in row.items() if k not in CONSUMED},
        format=fmt,
    )


def _easyr1_messages(row: dict) -> list[dict]:
    problem = row["problem"]
    if not isinstance(problem, str):
        raise RowError(WRONG_TYPE, f"`problem` must be a string, got {type(problem).__name__}")
    parts: list[dict] = []
    for i, text in enumerate(problem.split("<image>")):
        if i > 0:
            parts.append({"type": "image"})
        if text:
            parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


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
        elif not isinstance(content, str):
            raise RowError(WRONG_TYPE, f"message {i}: content must be a string or a list of parts")
    if not any(m["role"] == "user" for m in messages):
        raise RowError(EMPTY_QUESTION, "no user message")
    return messages


def _split_images(messages: list[dict], listed: Any, base_dir: Path) -> tuple[list[dict], list[ImageRef]]:
    """Move image references out of the message parts into one ordered list; parts become {"type": "image"}."""
    if listed is not None and not isinstance(listed, list):
        raise RowError(WRONG_TYPE, f"`images` must be a list, got {type(listed).__name__}")
    queue = list(listed or [])
    images: list[ImageRef] = []
    out = []
    for m in messages:
        if isinstance(m["content"], str):
            out.append(m)
            continue
        parts = []
        for p in m["content"]:
            if p["type"] in ("image", "image_url"):
                ref = (p.get("image_url") or {}).get("url") if p["type"] == "image_url" else p.get("image")
                if ref is None:
                    if not queue:
                        raise RowError(
                            IMAGE_COUNT, f"more image placeholders than images ({len(listed or [])} listed)"
                        )
                    ref = queue.pop(0)
                images.append(_image_ref(ref, base_dir))
                parts.append({"type": "image"})
            else:
                parts.append(p)
        out.append({**m, "content": parts})
    if queue:
        raise RowError(IMAGE_COUNT, f"{len(images) + len(queue)} images but {len(images)} image placeholders")
    return out, images


def _image_ref(ref: Any, base_dir: Path) -> ImageRef:
    if isinstance(ref, dict):  # parquet / HF datasets struct
        if ref.get("bytes"):
            return bytes(ref["bytes"])
        ref = ref.get("path")
    if isinstance(ref, bytes):
        return ref
    if not isinstance(ref, str) or not ref:
        raise RowError(WRONG_TYPE, f"an image must be a path string, got {type(ref).__name__}")
    if ref.startswith("data:"):
        return base64.b64decode(ref.split(",", 1)[1])
    if ref.startswith(("http://", "https://")):
        raise RowError(MISSING_IMAGE, f"remote image {ref} is not fetched; download it and use a local path")
    path = Path(ref.removeprefix("file://"))
    return str(path if path.is_absolute() else base_dir / path)


def _answer(row: dict) -> str:
    answer = row.get("answer")
    if answer is None:
        raise RowError(MISSING_ANSWER, "no `answer`")
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise RowError(WRONG_TYPE, f"`answer` must be a string or number, got {type(answer).__name__}")
    answer = str(answer)
    if not answer.strip():
        raise RowError(MISSING_ANSWER, "`answer` is empty")
    return answer


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


def open_image(ref: ImageRef) -> Image.Image:
    return Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref)


def check_images(sample: Sample) -> None:
    """Decode every image fully (a truncated file fails here, not at step 5,000); record the sizes."""
    sizes = []
    for i, ref in enumerate(sample.images):
        if isinstance(ref, str) and not Path(ref).is_file():
            raise RowError(MISSING_IMAGE, f"image {i} not found: {ref}")
        try:
            with open_image(ref) as im:
                im.load()
                sizes.append(im.size)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
            where = ref if isinstance(ref, str) else f"({len(ref)} bytes)"
            raise RowError(UNREADABLE_IMAGE, f"image {i} {where} cannot be decoded: {e}") from None
    sample.image_sizes = sizes


def check_prompt_length(sample: Sample, encoder: Any, system_prompt: str = "") -> None:
    from observe_r1.models.inputs import PromptError

    messages = with_system_prompt(sample.messages, system_prompt)
    try:
        n = encoder.prompt_length(messages, sample.image_sizes, sample.id)
    except PromptError as e:
        raise RowError(IMAGE_COUNT, str(e)) from None
    except ValueError as e:  # e.g. an aspect ratio the image processor refuses
        raise RowError(UNREADABLE_IMAGE, str(e)) from None
    if encoder.max_prompt_length is not None and n > encoder.max_prompt_length:
        raise RowError(
            TOO_LONG,
            f"prompt is {n} tokens with image tokens, over max_prompt_length={encoder.max_prompt_length}",
        )


def load_dataset(
    paths: Sequence[str | Path] | str | Path,
    encoder: Any = None,
    system_prompt: str = "",
    check_image_files: bool = True,
    on_row: Callable[[], None] | None = None,
) -> LoadResult:
    """Parse and validate every row of every file. Nothing raises for a bad row: it becomes a Problem."""
    paths = [paths] if isinstance(paths, str | Path) else paths
    samples: list[Sample] = []
    problems: list[Problem] = []
    formats: Counter[str] = Counter()
    seen: set[str] = set()
    rows = 0
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"dataset file not found: {path}")
        for line, row in read_rows(path):
            rows += 1
            sid = None
            try:
                if isinstance(row, RowError):
                    raise row
                sample = parse_row(row, path.parent, default_id=f"{path.stem}:{line}")
                sid = sample.id
                if sid in seen:
                    raise RowError(DUPLICATE_ID, f"id {sid!r} appeared earlier")
                if check_image_files:
                    check_images(sample)
                if encoder is not None:
                    check_prompt_length(sample, encoder, system_prompt)
                sample.source = f"{path}:{line}"
                seen.add(sid)
                samples.append(sample)
                formats[sample.format] += 1
            except RowError as e:
                problems.append(Problem(str(path), line, sid, e.kind, str(e)))
            if on_row is not None:
                on_row()
    return LoadResult(samples, problems, rows, formats)


def load_samples(
    paths: Sequence[str | Path] | str | Path,
    encoder: Any = None,
    system_prompt: str = "",
    max_bad_row_fraction: float = 0.5,
) -> list[Sample]:
    """For training: bad rows are skipped and counted in the log; a mostly-bad dataset is refused."""
    result = load_dataset(paths, encoder, system_prompt)
    if result.problems:
        kinds = Counter(p.kind for p in result.problems)
        log.warning(
            "skipped %d of %d rows (%s); first: %s; run `observe-r1 data check` for the full list",
            len(result.problems),
            result.rows,
            ", ".join(f"{k}: {n}" for k, n in kinds.most_common()),
            result.problems[0],
        )
    if not result.samples or len(result.problems) > max_bad_row_fraction * result.rows:
        raise ValueError(
            f"{len(result.problems)} of {result.rows} rows in {paths} are bad (limit data.max_bad_row_fraction="
            f"{max_bad_row_fraction}); run `observe-r1 data check` to see them"
        )
    return result.samples


def to_native_row(sample: Sample, image_dir: Path) -> dict[str, Any]:
    """The sample as a native row (image paths absolute; image bytes written to `image_dir`), with its
    metadata columns; loading the row back gives the same sample."""
    paths = []
    for i, ref in enumerate(sample.images):
        if isinstance(ref, bytes):
            image_dir.mkdir(parents=True, exist_ok=True)
            path = image_dir / f"{sample.id.replace('/', '_')}-{i}.png"
            open_image(ref).save(path)
            ref = str(path)
        paths.append(str(Path(ref).resolve()))
    queue = iter(paths)
    messages = [
        m if isinstance(m["content"], str)
        else {**m, "content": [{**p, "image": next(queue)} if p["type"] == "image" else p for p in m["content"]]}
        for m in sample.messages
    ]  # fmt: skip
    return {"id": sample.id, "messages": messages, "answer": sample.answer, **sample.metadata}
