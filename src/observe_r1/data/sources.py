"""Where rows come from, read lazily: jsonl line by line, parquet and Arrow 256 rows at a time.

A data entry (`data.train`, `data.test`, `observe-r1 data check`, the Python API) may be:
  data/train.jsonl        a jsonl or parquet file
  data/*.parquet          a glob (files in sorted order)
  data/geo3k              a folder: a `datasets` `save_to_disk` folder, or every jsonl / parquet file in it
                          (recursively, sorted)
  data/geo3k@train        one split: of a `save_to_disk` DatasetDict folder, or the folder's files whose name
                          starts with the split (`train.jsonl`, `data/train-00000-of-00001.parquet`: a hub
                          download's layout)
  rows                    in memory: a list of dicts, or a `datasets.Dataset` (Python API)
The hub is never read: a name that is no local path says how to download it.
"""

from __future__ import annotations

import bisect
import functools
import glob
import io
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

MALFORMED = "malformed_row"
TOO_LARGE = "row_too_large"
MAX_ROW_BYTES = 64 << 20  # a row larger than this (64 MiB: images inline as data: URIs fit) is refused unread
BATCH_ROWS = 256  # rows per parquet / Arrow read
DATA_SUFFIXES = (".jsonl", ".parquet")
Rows = Iterator[tuple[int, "dict | RowError"]]  # (line or row number, row)


class RowError(ValueError):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Source:
    name: str  # in problems and logs: a file, DIR@split, or <memory>
    base_dir: Path  # relative image paths are found here (unless data.image_dir says otherwise)
    read: Callable[[], Rows]
    count: Callable[[], int]  # rows, for progress bars (cheap: parquet and Arrow know it)


def resolve(data: Any) -> list[Source]:
    """The sources of a data entry or a list of them (see the module docstring); Sources pass through."""
    if isinstance(data, Source):
        return [data]
    if _is_hf_dataset(data):
        return [_arrow_source(data, "<Dataset>", Path.cwd())]
    if isinstance(data, list | tuple) and data and all(isinstance(r, dict) for r in data):
        return [_memory_source(list(data))]
    if isinstance(data, str | Path):
        return _resolve_path(str(data))
    return [s for entry in data for s in resolve(entry)]


def _resolve_path(spec: str) -> list[Source]:
    path, split = Path(spec), None
    if not path.exists() and "@" in spec:
        base, split = spec.rsplit("@", 1)
        path = Path(base)
    if any(c in spec for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
        if not files:
            raise FileNotFoundError(f"dataset glob {spec!r} matches no file")
        return [_file_source(f) for f in files]
    if path.is_file():
        if split is not None:
            raise FileNotFoundError(f"dataset {spec!r}: @split needs a folder, {path} is a file")
        return [_file_source(path)]
    if path.is_dir():
        return _folder(path, split)
    hub = re.fullmatch(r"[\w.-]+/[\w.-]+", str(path))
    raise FileNotFoundError(
        f"dataset not found: {spec}"
        + (
            f" (the hub is not read: `huggingface-cli download --repo-type dataset {path} --local-dir DIR`, then "
            f"use DIR@{split or 'train'})"
            if hub
            else ""
        )  # fmt: skip
    )


def _folder(path: Path, split: str | None) -> list[Source]:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return [_saved_dataset(path, split)]
    files = sorted(f for f in path.rglob("*") if f.suffix in DATA_SUFFIXES and f.is_file())
    if split is not None:
        chosen = [f for f in files if re.match(rf"{re.escape(split)}(?:[-_.]|$)", f.stem)]
        if not chosen:
            found = sorted({re.split(r"[-_.]", f.stem)[0] for f in files})
            raise FileNotFoundError(f"{path}: no files of split {split!r} (files start with {found})")
        files = chosen
    if not files:
        raise FileNotFoundError(f"{path}: no jsonl or parquet files in this folder")
    return [_file_source(f) for f in files]


def _saved_dataset(path: Path, split: str | None) -> Source:
    """A folder written by `datasets`' `save_to_disk` (a Dataset, or a DatasetDict and one of its splits)."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"{path} is a `datasets` folder: reading it needs `pip install datasets`") from e
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split is None and len(loaded) == 1:
            split = next(iter(loaded))
        if split not in loaded:
            raise FileNotFoundError(f"{path}: name a split as {path}@SPLIT, one of {sorted(loaded)}")
        return _arrow_source(loaded[split], f"{path}@{split}", path)
    return _arrow_source(loaded, str(path), path)


def _is_hf_dataset(data: Any) -> bool:
    return type(data).__name__ == "Dataset" and hasattr(data, "with_format") and hasattr(data, "features")


def _arrow_source(dataset: Any, name: str, base_dir: Path) -> Source:
    """A `datasets.Dataset`, read as Arrow batches: image columns stay {bytes, path}, never decoded here."""

    def read() -> Rows:
        yield from _numbered(
            row for t in dataset.with_format("arrow").iter(BATCH_ROWS) for row in t.to_pylist()
        )

    return Source(name, base_dir, read, lambda: len(dataset))


def _memory_source(rows: list[dict]) -> Source:
    return Source("<memory>", Path.cwd(), lambda: _numbered(rows), lambda: len(rows))


def _file_source(path: Path) -> Source:
    if path.suffix == ".parquet":
        return Source(
            str(path), path.parent, lambda: _numbered(_parquet_rows(path)), lambda: _parquet_count(path)
        )
    return Source(
        str(path), path.parent, lambda: _jsonl_rows(path), lambda: sum(1 for _ in _jsonl_rows(path))
    )


def _numbered(rows: Iterable[dict]) -> Rows:
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            yield i, RowError(MALFORMED, f"a row must be a dict, got {type(row).__name__}")
        elif (size := _text_bytes(row)) > MAX_ROW_BYTES:
            yield i, RowError(TOO_LARGE, f"the row holds {size:,} bytes of text, over {MAX_ROW_BYTES:,}")
        else:
            yield i, row


def _text_bytes(value: Any) -> int:
    """The characters of the strings and bytes in a row (images held as references count nothing)."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_text_bytes(v) for v in value)
    return 0


def _jsonl_rows(path: Path) -> Rows:
    """(line, row); a line that is not a JSON object, or longer than MAX_ROW_BYTES (never read whole: a
    400 MB line once took 19 GB), yields a RowError instead."""
    with path.open("rb") as f:
        for i in itertools.count(1):
            raw = f.readline(MAX_ROW_BYTES + 1)
            if not raw:
                return
            if len(raw) > MAX_ROW_BYTES:
                size = len(raw) + _skip_line(f)
                yield i, RowError(TOO_LARGE, f"the line is {size:,} bytes, over {MAX_ROW_BYTES:,}")
                continue
            if i == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
            if not raw.strip():
                continue
            try:
                yield i, _json_row(raw)
            except RowError as e:
                yield i, e


def _skip_line(f: Any) -> int:
    """Read past the rest of the current line, a MiB at a time; the bytes skipped."""
    skipped = 0
    while chunk := f.readline(1 << 20):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def _json_row(raw: bytes) -> dict:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RowError(MALFORMED, f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise RowError(MALFORMED, f"not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise RowError(MALFORMED, "JSON nested too deeply") from None
    except ValueError as e:  # e.g. a number of more than 4300 digits
        raise RowError(MALFORMED, f"not valid JSON ({e})") from None
    if not isinstance(row, dict):
        raise RowError(MALFORMED, "a row must be a JSON object")
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RowError(MALFORMED, "a string holds a lone surrogate (\\ud800-\\udfff), not text") from None
    return row


def _parquet_file(path: Path) -> Any:
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow's errors for a file that is not parquet
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None


def _parquet_rows(path: Path) -> Iterator[dict]:
    """Row groups one batch at a time, so a large file is never whole in memory; the images of top-level
    columns become `ParquetImage` references, read again when a prompt is built (a loaded dataset holds no
    image bytes)."""
    i = 0
    for batch in _parquet_file(path).iter_batches(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            yield {k: _referenced(v, str(path), i, k) for k, v in row.items()}
            i += 1


@dataclass(frozen=True)
class ParquetImage:
    """An image stored in a parquet file (a `{bytes, path}` struct), read when it is used."""

    path: str
    row: int  # 0-based, in the file
    column: str
    index: int | None = None  # its position in a list column

    def read(self) -> bytes:
        """The image's bytes; an OSError naming the row when the file no longer holds it (a file written
        again since it was loaded), which training counts and skips like a deleted image file."""
        version = os.stat(self.path).st_mtime_ns  # a file written again is read again, never a stale cache
        try:
            group, offset = _locate(self.path, version, self.row)
            value = _group_column(self.path, version, group, self.column)[offset]
            return bytes((value if self.index is None else value[self.index])["bytes"])
        except (IndexError, KeyError, TypeError, ValueError) as e:  # ValueError: pyarrow's ArrowInvalid too
            raise OSError(f"{self.path} row {self.row + 1}, column {self.column!r}: the image is no longer "
                          f"there ({type(e).__name__}: {e})") from None  # fmt: skip


def open_image(ref: str | bytes | ParquetImage) -> Any:
    """A PIL image from a path, encoded bytes or a parquet file's image (not yet decoded: `Image.open`)."""
    if isinstance(ref, ParquetImage):
        ref = ref.read()
    return Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref)


def _is_image_struct(value: Any) -> bool:
    return isinstance(value, dict) and value.keys() == {"bytes", "path"} and bool(value["bytes"])


def _referenced(value: Any, path: str, row: int, column: str) -> Any:
    if _is_image_struct(value):
        return ParquetImage(path, row, column)
    if isinstance(value, list) and value and all(_is_image_struct(v) for v in value):
        return [ParquetImage(path, row, column, k) for k in range(len(value))]
    return value


@functools.lru_cache(maxsize=64)
def _group_starts(path: str, version: int) -> list[int]:
    meta, starts = _parquet_file(Path(path)).metadata, [0]
    for g in range(meta.num_row_groups):
        starts.append(starts[-1] + meta.row_group(g).num_rows)
    return starts


def _locate(path: str, version: int, row: int) -> tuple[int, int]:
    starts = _group_starts(path, version)
    group = bisect.bisect_right(starts, row) - 1
    return group, row - starts[group]


@functools.lru_cache(maxsize=2)  # the row group being read, and the one before: bounded memory
def _group_column(path: str, version: int, group: int, column: str) -> list:
    return _parquet_file(Path(path)).read_row_group(group, columns=[column]).column(column).to_pylist()


def _parquet_count(path: Path) -> int:
    return _parquet_file(path).metadata.num_rows
