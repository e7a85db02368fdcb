"""Data sources and column mapping: globs, folders, `datasets` folders, DIR@split, rows in memory, and
EasyR1's prompt_key / answer_key / image_key / image_dir (observe_r1.data.sources, dataset.Columns)."""

import json
import shutil

import pytest
from PIL import Image

from observe_r1.cli import main
from observe_r1.config import load_config
from observe_r1.data.dataset import Columns, load_dataset, load_samples
from observe_r1.data.sources import resolve

datasets = pytest.importorskip("datasets")


def test_easyr1_jsonl_with_image_dir(realcases, tmp_path):
    """EasyR1's jsonl form: image paths relative to data.image_dir, not to the file."""
    path = tmp_path / "geo.jsonl"
    shutil.copy(realcases / "data" / "geometry3k_easyr1.jsonl", path)
    assert {p.kind for p in load_dataset(path).problems} == {"missing_image"}
    result = load_dataset(path, columns=Columns(image_dir=str(realcases / "data")))
    assert not result.problems and [s.answer for s in result.samples] == ["3", "63", "2 \\sqrt { 221 }"]
    assert result.samples[0].image_sizes and result.formats == {"easyr1": 3}


def test_prompt_answer_and_image_keys(tmp_path):
    Image.new("RGB", (56, 56)).save(tmp_path / "a.png")
    rows = [{"question": "<image>How many?", "gt": "4", "pics": ["a.png"], "level": 2},
            {"question": [{"role": "user", "content": "<image>Colour?"}], "gt": "red", "pics": "a.png"}]  # fmt: skip
    path = tmp_path / "custom.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert {p.kind for p in load_dataset(path).problems} == {"unknown_format"}
    mapped = load_dataset(path, columns=Columns(prompt_key="question", answer_key="gt", image_key="pics"))
    assert not mapped.problems
    first, second = mapped.samples
    assert (first.answer, first.question, len(first.images), first.metadata) == (
        "4",
        "How many?",
        1,
        {"gt": "4", "level": 2},
    )
    assert (second.answer, second.question, len(second.images)) == ("red", "Colour?", 1)
    missing = load_dataset(path, columns=Columns(prompt_key="question", answer_key="gold", image_key="pics"))
    assert [p.kind for p in missing.problems] == [
        "missing_answer"
    ] * 2 and "data.answer_key" in missing.problems[0].message


def test_dotted_answer_key_and_the_ground_truth_column(realcases):
    verl = realcases / "data" / "verl_geo3k.parquet"
    got = load_dataset(verl, columns=Columns(answer_key="extra_info.answer"))
    assert [s.answer for s in got.samples] == [s.answer for s in load_dataset(verl).samples]
    geo = load_dataset(
        realcases / "data" / "geometry3k_easyr1.parquet", columns=Columns(answer_key="ground_truth")
    )
    assert not geo.problems and geo.samples[0].answer != ""


def test_globs_and_folders(realcases, tmp_path):
    for name in ("geometry3k_easyr1.parquet", "verl_geo3k.parquet", "trl_grpo_vlm.parquet"):
        shutil.copy(realcases / "data" / name, tmp_path / name)
    (tmp_path / "notes.txt").write_text("not data")
    assert [s.name for s in resolve(str(tmp_path / "*geo3k*.parquet"))] == [
        str(tmp_path / "verl_geo3k.parquet")
    ]
    folder = resolve(tmp_path)
    assert [s.name.rsplit("/", 1)[1] for s in folder] == sorted(["geometry3k_easyr1.parquet", "verl_geo3k.parquet",
                                                                 "trl_grpo_vlm.parquet"])  # fmt: skip
    assert sum(s.count() for s in folder) == 7  # parquet metadata, nothing read
    assert len(load_dataset(tmp_path).samples) == 7
    with pytest.raises(FileNotFoundError, match="matches no file"):
        resolve(str(tmp_path / "*.jsonl"))


def test_hub_download_layout_at_split(realcases, tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copy(
        realcases / "data" / "geometry3k_easyr1.parquet", tmp_path / "data" / "train-00000-of-00001.parquet"
    )
    shutil.copy(realcases / "data" / "verl_geo3k.parquet", tmp_path / "data" / "test-00000-of-00001.parquet")
    train = load_dataset(f"{tmp_path}@train")
    assert train.formats == {"easyr1": 3} and train.samples[0].source.endswith(
        "train-00000-of-00001.parquet:1"
    )
    assert load_dataset(f"{tmp_path}@test").formats == {"verl": 3}
    with pytest.raises(FileNotFoundError, match=r"no files of split 'validation'.*\['test', 'train'\]"):
        resolve(f"{tmp_path}@validation")


def test_hub_names_are_not_fetched():
    with pytest.raises(FileNotFoundError, match="hub is not read.*huggingface-cli download --repo-type dataset "
                                                "hiyouga/geometry3k.*@train"):  # fmt: skip
        resolve("hiyouga/geometry3k@train")


def test_datasets_save_to_disk_folders(tmp_path):
    image = Image.new("RGB", (56, 56), (200, 0, 0))
    rows = [{"problem": f"<image>q{i}", "answer": str(i), "images": [image]} for i in range(5)]
    split = datasets.Dataset.from_list(rows, features=datasets.Features(
        {"problem": datasets.Value("string"), "answer": datasets.Value("string"),
         "images": datasets.List(datasets.Image())}))  # fmt: skip
    split.save_to_disk(tmp_path / "one")
    datasets.DatasetDict({"train": split, "test": split.select(range(2))}).save_to_disk(tmp_path / "both")
    one = load_dataset(tmp_path / "one")
    assert not one.problems and len(one.samples) == 5 and one.samples[0].image_sizes == [(56, 56)]
    assert isinstance(one.samples[0].images[0], bytes)  # kept encoded, decoded only when used
    assert len(load_dataset(f"{tmp_path / 'both'}@test").samples) == 2
    with pytest.raises(FileNotFoundError, match=r"both@SPLIT, one of \['test', 'train'\]"):
        resolve(tmp_path / "both")


def test_rows_in_memory(tmp_path):
    image = Image.new("RGB", (56, 56), (0, 0, 200))
    rows = [{"problem": "<image>What colour?", "answer": "blue", "images": [image]}, {"problem": 3}]
    result = load_dataset(rows)
    assert len(result.samples) == 1 and result.problems[0].file == "<memory>" and result.problems[0].line == 2
    assert result.samples[0].load_images()[0].getpixel((0, 0)) == (0, 0, 200)
    in_memory = datasets.Dataset.from_list(rows[:1] * 3)
    assert [s.answer for s in load_samples(in_memory)] == ["blue"] * 3


def test_config_keys_and_data_check(realcases, tmp_path, capsys):
    path = tmp_path / "geo.jsonl"
    shutil.copy(realcases / "data" / "geometry3k_easyr1.jsonl", path)
    cfg = load_config(None, [f"data.image_dir={realcases / 'data'}", "data.prompt_key=problem", "data.answer_key=answer",
                             "data.image_key=images"])  # fmt: skip
    assert Columns.of(cfg.data) == Columns("problem", "answer", "images", str(realcases / "data"))
    assert main(["data", "check", str(path)]) == 1
    assert main(["data", "check", str(path), "--image-dir", str(realcases / "data")]) == 0
    assert "3 rows: 3 good, 0 bad" in capsys.readouterr().out
