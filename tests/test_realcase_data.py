"""Every file of ../shared/realcases/data (the exact layouts of EasyR1, verl, TRL, lmm-r1 and the original
Observe-R1 datasets) loads as the same `Sample`, with its images and its gold answer."""

import re

import pytest

from observe_r1.cli import main
from observe_r1.data import dataset as ds
from observe_r1.data.dataset import load_dataset

GEO3K_ANSWERS = ["3", "63", "2 \\sqrt { 221 }"]

# file -> (format, good rows, images per good row, gold answers, problems by line)
EXPECTED = {
    "geometry3k_easyr1.jsonl": ("easyr1", 3, [1, 1, 1], GEO3K_ANSWERS, {}),
    "geometry3k_easyr1.parquet": ("easyr1", 3, [1, 1, 1], GEO3K_ANSWERS, {}),
    "verl_geo3k.parquet": ("verl", 3, [1, 1, 1], GEO3K_ANSWERS, {}),
    "trl_grpo_vlm.parquet": ("trl", 1, [1], ["$60^\\circ$"], {}),
    "trl_vision_conversational.parquet": ("trl", 1, [1], ["blue"], {}),
    "hf_single_image_column.parquet": ("easyr1", 1, [1], ["60"], {}),
    "lmmr1_test_message.local.jsonl": ("observe-r1", 2, [1, 1], ["$\\boxed{60}$", "$\\boxed{A}$"], {}),
    "lmmr1_test_message.verbatim.jsonl": (
        "observe-r1",
        0,
        [],
        [],
        {1: ds.MISSING_IMAGE, 2: ds.MISSING_IMAGE},
    ),
    "observe_r1_readme.jsonl": (
        "observe-r1",
        4,
        [1, 1, 1, 1],
        ["$3$", "$3$", "cats", "cats"],
        {5: ds.REMOTE_IMAGE},
    ),
}


@pytest.fixture
def data_file(realcases, tmp_path):
    """A realcases data file, `{DATA_DIR}` in its image paths replaced by the folder's absolute path."""

    def get(name):
        path = realcases / "data" / name
        if path.suffix != ".jsonl" or "{DATA_DIR}" not in path.read_text():
            return path
        copy = tmp_path / name
        copy.write_text(path.read_text().replace("{DATA_DIR}", str(path.parent.resolve())))
        return copy

    return get


def test_every_realcase_file_is_expected(realcases):
    assert sorted(
        p.name for p in (realcases / "data").glob("*.*") if p.suffix in (".jsonl", ".parquet")
    ) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_peer_layout_loads(name, data_file):
    fmt, good, images, answers, problems = EXPECTED[name]
    result = load_dataset(data_file(name))
    assert {p.line: p.kind for p in result.problems} == problems, [str(p) for p in result.problems]
    assert len(result.samples) == good and result.formats == {fmt: good + len(problems)}
    assert [len(s.images) for s in result.samples] == images
    assert [s.answer for s in result.samples] == answers
    for s in result.samples:
        assert s.question.strip() and all(im.size[0] > 0 for im in s.load_images())
        parts = [p for m in s.messages if isinstance(m["content"], list) for p in m["content"]]
        assert sum(p == {"type": "image"} for p in parts) == len(s.images)


def test_verl_keeps_its_columns_for_reward_plugins(data_file):
    s = load_dataset(data_file("verl_geo3k.parquet")).samples[2]
    assert s.metadata["data_source"] == "hiyouga/geometry3k" and s.metadata["extra_info"]["index"] == 2
    assert s.messages[0]["content"][0] == {"type": "image"} and "Find x." in s.question


def test_trl_prompt_without_placeholder_gets_its_image_first(data_file):
    (s,) = load_dataset(data_file("trl_grpo_vlm.parquet")).samples
    system, user = s.messages
    assert system["role"] == "system" and user["content"][0] == {"type": "image"}
    assert s.metadata["solution"] == "$60^\\circ$"  # the column reaches TRL-style rewards by its name


def test_trl_solution_answer_tags_are_stripped(tmp_path, realcases):
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(realcases / "data" / "trl_grpo_vlm.parquet").to_pylist()
    table[0]["solution"] = "<answer> 60 </answer>"
    path = tmp_path / "t.parquet"
    pq.write_table(__import__("pyarrow").Table.from_pylist(table), path)
    assert load_dataset(path).samples[0].answer == "60"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_data_check_names_the_format_and_counts_images(name, data_file, capsys):
    fmt, good, images, _, problems = EXPECTED[name]
    code = main(["data", "check", str(data_file(name))])
    out = capsys.readouterr().out
    assert code == (1 if problems else 0)
    rows = good + len(problems)
    assert f"{rows} rows: {good} good, {len(problems)} bad" in out
    assert re.search(rf"format\s+│ {fmt}\s+│\s+{rows} │", out)
    assert re.search(rf"images\s+│ in good rows\s+│\s+{sum(images)} │", out)
