import base64
import io
import json
import shutil

import pytest
from PIL import Image

from observe_r1.cli import main
from observe_r1.data import dataset as ds
from observe_r1.data.dataset import load_dataset, load_samples
from observe_r1.data.sources import ParquetImage


@pytest.fixture
def img(tmp_path):
    path = tmp_path / "img.png"
    Image.new("RGB", (112, 112), (255, 0, 0)).save(path)
    return path


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_native_synth_rows_load(synth_dir):
    result = load_dataset(synth_dir / "train.jsonl")
    assert not result.problems and len(result.samples) == 60 and result.formats == {"native": 60}
    s = result.samples[0]
    assert s.id == "train-000000" and s.messages[0]["content"][0] == {"type": "image"}
    assert s.metadata["level"] in range(1, 7) and "solution" in s.metadata
    assert s.source.endswith("train.jsonl:1") and s.image_sizes == [(112, 112)]
    assert s.load_images()[0].size == (112, 112)


def test_original_observe_r1_rows(tmp_path, img):
    message = [
        {"role": "system", "content": "Answer in tags."},
        {
            "role": "user",
            "content": [{"type": "image", "image": f"file://{img}"}, {"type": "text", "text": "What?"}],
        },
    ]
    path = write_jsonl(tmp_path / "o.jsonl", [{"message": json.dumps(message), "answer": "$3$"}])
    (s,) = load_dataset(path).samples
    assert s.format == "observe-r1" and s.images == [str(img)] and s.answer == "$3$"
    assert s.messages[0]["role"] == "system" and s.question == "What?" and s.id == "o:1"


def test_easyr1_rows_with_several_images_and_numbers_as_answers(tmp_path, img):
    row = {
        "problem": "<image>Compare with <image>. Which is bigger?",
        "answer": 2,
        "images": [img.name, str(img)],
    }
    (s,) = load_dataset(write_jsonl(tmp_path / "e.jsonl", [row])).samples
    assert s.format == "easyr1" and s.answer == "2" and len(s.images) == 2
    assert [p["type"] for p in s.messages[0]["content"]] == ["image", "text", "image", "text"]


def test_text_only_rows(tmp_path):
    (s,) = load_dataset(write_jsonl(tmp_path / "t.jsonl", [{"problem": "1+1?", "answer": "2"}])).samples
    assert s.images == [] and s.question == "1+1?"


def test_parquet_with_image_bytes(tmp_path, img):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "problem": ["<image>How many?"],
            "answer": ["3"],
            "images": [[{"bytes": img.read_bytes(), "path": "x.png"}]],
            "level": [2],
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    (s,) = load_dataset(tmp_path / "d.parquet").samples
    assert s.images[0] == ParquetImage(str(tmp_path / "d.parquet"), 0, "images", 0)  # read again when used
    assert s.load_images()[0].size == (112, 112) and s.metadata["level"] == 2


def test_parquet_images_are_not_held_in_memory(tmp_path):
    """A loaded parquet dataset keeps references, not image bytes: 600 rows of ~60 KB images in row groups of
    100; each image reads back exactly, only two row groups are cached at a time."""
    import random

    from observe_r1.data import sources

    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = random.Random(0)
    rows = []
    for i in range(600):
        noise = Image.frombytes("RGB", (140, 140), bytes(rng.getrandbits(8) for _ in range(140 * 140 * 3)))
        buffer = io.BytesIO()
        noise.save(buffer, format="PNG")
        rows.append(
            {"problem": f"<image>q{i}", "answer": str(i), "image": {"bytes": buffer.getvalue(), "path": None}}
        )
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "big.parquet", row_group_size=100)
    result = load_dataset(tmp_path / "big.parquet")
    assert len(result.samples) == 600 and not result.problems
    assert not any(isinstance(ref, bytes) for s in result.samples for ref in s.images)
    for k in (0, 99, 100, 599, 250):
        assert result.samples[k].images[0].read() == rows[k]["image"]["bytes"]
    assert sources._group_column.cache_info().currsize <= 2


def bad_rows(tmp_path, img):
    """One row per kind of problem; returns (path, {line: kind})."""
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(img.read_bytes()[:60])  # truncated PNG
    good = {"problem": "<image>How many?", "answer": "3", "images": [str(img)]}
    rows = [
        good,  # 1
        "{not json",  # 2
        {"question": "no known columns", "answer": "1"},  # 3
        {**good, "answer": None},  # 4
        {**good, "problem": "<image>   "},  # 5
        {**good, "images": [str(tmp_path / "nope.png")]},  # 6
        {**good, "images": [str(corrupt)]},  # 7
        {**good, "images": [str(img), str(img)]},  # 8: more images than placeholders
        {**good, "problem": "<image><image>Two?"},  # 9: more placeholders than images
        {**good, "problem": 42},  # 10
        {"id": "dup", **good},  # 11
        {"id": "dup", **good},  # 12
        {**good, "problem": "<image>" + "describe every pixel " * 40},  # 13: too long with a model
        {"message": [{"role": "user", "content": "x"}], "answer": "1"},  # 14: message must be a JSON string
        "[1, 2]",  # 15
        {**good, "answer": ""},  # 16
        {**good, "images": "img.png"},  # 17
        {"messages": [{"role": "robot", "content": "hi"}], "answer": "1"},  # 18
    ]
    expected = {
        2: ds.MALFORMED,
        3: ds.UNKNOWN_FORMAT,
        4: ds.MISSING_ANSWER,
        5: ds.EMPTY_QUESTION,
        6: ds.MISSING_IMAGE,
        7: ds.UNREADABLE_IMAGE,
        8: ds.IMAGE_COUNT,
        9: ds.IMAGE_COUNT,
        10: ds.WRONG_TYPE,
        12: ds.DUPLICATE_ID,
        13: ds.TOO_LONG,
        14: ds.WRONG_TYPE,
        15: ds.MALFORMED,
        16: ds.MISSING_ANSWER,
        17: ds.WRONG_TYPE,
        18: ds.WRONG_TYPE,
    }
    return write_jsonl(tmp_path / "bad.jsonl", rows), expected


def test_every_bad_row_is_reported_with_its_line_and_kind(tmp_path, img, encoder):
    path, expected = bad_rows(tmp_path, img)
    encoder.max_prompt_length = 100
    try:
        result = load_dataset(path, encoder=encoder)
    finally:
        encoder.max_prompt_length = 1024
    assert {p.line: p.kind for p in result.problems} == expected
    assert len(set(expected.values())) >= 8
    assert {s.source.rsplit(":", 1)[1] for s in result.samples} == {"1", "11"}
    assert all(p.file == str(path) for p in result.problems)


def test_data_check_cli_lists_each_bad_row(tmp_path, img, tiny_model_dir, capsys):
    path, expected = bad_rows(tmp_path, img)
    code = main(
        [
            "data",
            "check",
            str(path),
            "--model",
            str(tiny_model_dir),
            "--max-prompt-length",
            "100",
            "--system-prompt",
            "none",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    for line, kind in expected.items():
        assert f"bad.jsonl:{line}" in out and kind in out
    assert "18 rows: 2 good, 16 bad" in out


def test_data_check_cli_on_clean_synth_data(synth_dir, tiny_model_dir, capsys):
    assert main(["data", "check", str(synth_dir / "train.jsonl"), "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "60 rows: 60 good, 0 bad" in out and "filter_count" in out


def test_training_load_skips_and_counts_bad_rows(tmp_path, img, caplog):
    path, expected = bad_rows(tmp_path, img)
    shutil.copy(path, tmp_path / "copy.jsonl")
    with caplog.at_level("WARNING"):
        samples = load_samples(path, max_bad_row_fraction=0.9)
    assert len(samples) == 3  # the long row passes without a model
    assert "skipped 15 of 18 rows" in caplog.text and "missing_image: 1" in caplog.text
    with pytest.raises(ValueError, match="15 of 18 rows .* are bad"):
        load_samples(path, max_bad_row_fraction=0.5)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        load_dataset(tmp_path / "nope.jsonl")


# ------------------------------------------------------------------ rows that used to abort a whole file


def hostile_rows(tmp_path, img):
    """Rows that each crashed or fooled the loader before; returns (path, {line: kind}, good lines)."""
    good = {"problem": "<image>How many?", "answer": "3", "images": [str(img)]}
    user = lambda *parts: {"messages": [{"role": "user", "content": list(parts)}], "answer": "3"}  # noqa: E731
    text = {"type": "text", "text": "How many?"}
    png = base64.b64encode(img.read_bytes()).decode()
    lines = [
        b"\xef\xbb\xbf" + json.dumps(good).encode(),  # 1: a byte-order mark: fine
        json.dumps({**good, "problem": "<image>caf\u00e9?"}).encode().replace(b"caf\\u00e9", b"caf\xe9"),  # 2
        json.dumps(user({"type": "image", "image": str(img)}, {"type": "text", "text": 42})).encode(),  # 3
        json.dumps(user({"type": "image", "image": str(img)}, {"type": "text", "text": ["a"]})).encode(),  # 4
        json.dumps(user({"type": "image_url", "image_url": "https://x.org/a.png"}, text)).encode(),  # 5
        json.dumps(
            user({"type": "image_url", "image_url": f"data:image/png;base64,{png}"}, text)
        ).encode(),  # 6
        json.dumps(user({"type": "image", "image": "data:image/png;base64"}, text)).encode(),  # 7: no comma
        json.dumps(
            user({"type": "image", "image": "data:image/png;base64,@@not base64@@"}, text)
        ).encode(),  # 8
        json.dumps({**good, "problem": "<image>x"}).encode().replace(b"<image>x", b"<image>\\ud800"),  # 9
        json.dumps(good).encode()[:-1] + b', "big": ' + b"9" * 5000 + b"}",  # 10
        b'{"problem": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # 11
        json.dumps({**good, "answer": float("nan")}).encode(),  # 12: NaN
        json.dumps({**good, "answer": float("inf")}).encode(),  # 13: Infinity
        json.dumps({**good, "difficulty": float("nan")}).encode(),  # 14
        json.dumps({**good, "difficulty": 1.5}).encode(),  # 15
        json.dumps({**good, "difficulty": 0.25, "complexity": 120.0}).encode(),  # 16: fine
        json.dumps({**good, "id": "/oops", "answer": ""}).encode(),  # 17: an id that is rich markup
        json.dumps({**good, "id": "abc", "answer": None}).encode(),  # 18: an id rich would swallow
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    expected = {
        2: ds.MALFORMED,
        3: ds.WRONG_TYPE,
        4: ds.WRONG_TYPE,
        5: ds.REMOTE_IMAGE,
        7: ds.UNREADABLE_IMAGE,
        8: ds.UNREADABLE_IMAGE,
        9: ds.MALFORMED,
        10: ds.MALFORMED,
        11: ds.MALFORMED,
        12: ds.MISSING_ANSWER,
        13: ds.MISSING_ANSWER,
        14: ds.BAD_SCORE,
        15: ds.BAD_SCORE,
        17: ds.MISSING_ANSWER,
        18: ds.MISSING_ANSWER,
    }
    return path, expected, {1, 6, 16}


def test_hostile_rows_are_reported_one_by_one(tmp_path, img):
    path, expected, good = hostile_rows(tmp_path, img)
    result = load_dataset(path)
    assert {p.line: p.kind for p in result.problems} == expected, [str(p) for p in result.problems]
    assert {int(s.source.rsplit(":", 1)[1]) for s in result.samples} == good
    messages = {p.line: p.message for p in result.problems}
    assert "not UTF-8 (byte 0xe9" in messages[2] and "lone surrogate" in messages[9]
    assert "nested too deeply" in messages[11] and "`answer` is nan" in messages[12]
    assert "`difficulty` must be a number in [0, 1]" in messages[15]


def test_data_check_lists_every_hostile_row_and_prints_ids_as_data(tmp_path, img, capsys):
    path, expected, good = hostile_rows(tmp_path, img)
    assert main(["data", "check", str(path)]) == 1
    out = capsys.readouterr().out
    for line, kind in expected.items():
        assert f"hostile.jsonl:{line}" in out and kind in out, line
    assert f"{len(expected) + len(good)} rows: {len(good)} good, {len(expected)} bad" in out
    assert "hostile.jsonl:17 [/oops] missing_answer" in out and "hostile.jsonl:18 [abc] missing_answer" in out


def test_image_url_may_be_a_plain_string(tmp_path, img):
    row = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": str(img)},
                                                     {"type": "text", "text": "How many?"}]}], "answer": "3"}  # fmt: skip
    (s,) = load_dataset(write_jsonl(tmp_path / "u.jsonl", [row])).samples
    assert s.images == [str(img)]


def test_parquet_nan_gold_is_a_missing_answer(tmp_path, img):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"problem": ["<image>How many?"] * 2, "answer": [3.0, float("nan")],
                      "images": [[str(img)]] * 2})  # fmt: skip
    pq.write_table(table, tmp_path / "n.parquet")
    result = load_dataset(tmp_path / "n.parquet")
    assert [s.answer for s in result.samples] == ["3.0"]
    assert [(p.line, p.kind) for p in result.problems] == [(2, ds.MISSING_ANSWER)]


def test_single_image_column_without_placeholder(tmp_path, img):
    rows = [{"problem": "How many shapes?", "image": str(img), "answer": "3"},
            {"problem": "Is it <image> red?", "image": {"bytes": img.read_bytes(), "path": None}, "answer": "yes"}]  # fmt: skip
    rows[1]["image"]["bytes"] = base64.b64encode(rows[1]["image"]["bytes"]).decode()  # JSON has no bytes
    rows[1]["image"] = f"data:image/png;base64,{rows[1]['image']['bytes']}"
    a, b = load_dataset(write_jsonl(tmp_path / "s.jsonl", rows)).samples
    assert a.messages[0]["content"][0] == {"type": "image"} and len(a.images) == 1
    assert [p["type"] for p in b.messages[0]["content"]] == ["text", "image", "text"]


def test_a_parquet_written_again_is_read_again(tmp_path, img):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"

    def write(colour):
        buffer = io.BytesIO()
        Image.new("RGB", (56, 56), colour).save(buffer, format="PNG")
        pq.write_table(
            pa.table(
                {
                    "problem": ["<image>q"],
                    "answer": ["1"],
                    "image": [{"bytes": buffer.getvalue(), "path": None}],
                }
            ),
            path,
        )

    write((255, 0, 0))
    (first,) = load_dataset(path).samples
    assert first.load_images()[0].getpixel((0, 0)) == (255, 0, 0)
    import os
    import time

    time.sleep(0.01)
    write((0, 0, 255))
    os.utime(path, ns=(time.time_ns(), time.time_ns()))
    (second,) = load_dataset(path).samples
    assert second.load_images()[0].getpixel((0, 0)) == (0, 0, 255)


def test_a_parquet_image_gone_from_its_file_is_an_os_error_naming_the_row(tmp_path):
    """Training skips a prompt whose image cannot be opened (OSError) with a count; a parquet rewritten with
    fewer rows since loading must fail that way too, not with an IndexError hours into a run."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    buffer = io.BytesIO()
    Image.new("RGB", (56, 56)).save(buffer, format="PNG")
    image = {"bytes": buffer.getvalue(), "path": None}
    pq.write_table(
        pa.table({"problem": ["<image>a", "<image>b"], "answer": ["1", "2"], "image": [image, image]}), path
    )
    second = load_dataset(path).samples[1]
    pq.write_table(pa.table({"problem": ["<image>a"], "answer": ["1"], "image": [image]}), path)
    import os
    import time

    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(OSError, match="d.parquet row 2, column 'image': the image is no longer there"):
        second.load_images()


def test_an_empty_file_says_it_has_no_rows(tmp_path, encoder):
    (tmp_path / "ladder.jsonl").write_text("")
    with pytest.raises(ValueError, match="ladder.jsonl: no rows"):
        load_samples([str(tmp_path / "ladder.jsonl")], encoder, "")
