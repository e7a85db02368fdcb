import json
import re

import pytest

from observe_r1.toy.synth import COLOURS, LEVELS, generate_split, render, write_dataset

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
LAYOUT = re.compile(r"^<observe>\n.+\n</observe>\n<think>\n.+\n</think>\n<answer>[^\n]+</answer>$", re.S)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = write_dataset(tmp_path / "a", train=40, test=10, seed=5)
    b = write_dataset(tmp_path / "b", train=40, test=10, seed=5)
    for split in ("train", "test"):
        assert a[split].read_bytes() == b[split].read_bytes()
    for png in (tmp_path / "a" / "images").iterdir():
        assert png.read_bytes() == (tmp_path / "b" / "images" / png.name).read_bytes()


def test_different_seed_differs(tmp_path):
    a = write_dataset(tmp_path / "a", train=20, test=0, seed=1)
    b = write_dataset(tmp_path / "b", train=20, test=0, seed=2)
    assert a["train"].read_bytes() != b["train"].read_bytes()


def test_train_and_test_are_disjoint():
    levels = tuple(LEVELS)
    test = generate_split(0, "test", 400, levels)
    keys = {(s.question, s.objects) for s in test}
    train = generate_split(0, "train", 2000, levels, exclude=keys)
    assert len(train) == 2000 and not keys & {(s.question, s.objects) for s in train}


def test_validation_split_is_apart_from_train_and_test(tmp_path):
    paths = write_dataset(tmp_path, train=200, test=100, seed=4, levels=(1,), val=100)
    assert sorted(paths) == ["test", "train", "val"]
    # a row's scene is spelt out in its reference's <observe> block
    scenes = {
        k: {(r["messages"][0]["content"][1]["text"], r["solution"]) for r in rows(p)}
        for k, p in paths.items()
    }
    assert len(rows(paths["val"])) == 100
    assert not scenes["val"] & scenes["test"] and not scenes["val"] & scenes["train"]
    assert not scenes["train"] & scenes["test"]
    # the test split does not depend on whether there is a validation split
    alone = write_dataset(tmp_path / "b", train=0, test=100, seed=4, levels=(1,))
    assert paths["test"].read_bytes() == alone["test"].read_bytes()


def test_rows_have_gold_level_skill_and_a_correct_reference(synth_dir):
    data = rows(synth_dir / "train.jsonl") + rows(synth_dir / "test.jsonl")
    assert {r["level"] for r in data} == set(LEVELS)
    for r in data:
        assert r["skill"] == LEVELS[r["level"]]
        assert LAYOUT.match(r["solution"]), r["solution"]
        assert ANSWER.search(r["solution"]).group(1) == r["answer"]
        assert (synth_dir / r["messages"][0]["content"][0]["image"]).is_file()


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_answers_are_right_for_the_scene(level):
    for s in generate_split(3, "check", 40, (level,)):
        objs = s.objects
        if level == 1:
            assert int(s.answer) == len(objs)
        elif level == 3:
            a, b = re.match(r"How many more (\w+) shapes than (\w+)", s.question).groups()
            assert int(s.answer) == sum(o.colour == a for o in objs) - sum(o.colour == b for o in objs) >= 0
        elif level == 4:
            options = dict(re.findall(r"([ABCD])\. (\w+)", s.question))
            assert set(options.values()) == set(COLOURS) and s.answer in options
        elif level == 5:
            assert int(s.answer) == sum(o.digit for o in objs)
        elif level == 6:
            colour = re.search(r"in the (\w+) shapes", s.question).group(1)
            assert int(s.answer) == sum(o.digit for o in objs if o.colour == colour)
            assert any(o.colour != colour for o in objs)  # a distractor is present


def test_spatial_answer_is_the_nearest_shape_in_that_direction():
    for s in generate_split(4, "check", 60, (4,)):
        m = re.search(
            r"nearest shape (to the left of|to the right of|above|below) the (\w+) (\w+)\?", s.question
        )
        where, colour, shape = m.groups()
        anchor = next(o for o in s.objects if (o.colour, o.shape) == (colour, shape))
        step = {"to the left of": (0, -1), "to the right of": (0, 1), "above": (-1, 0), "below": (1, 0)}[
            where
        ]
        cells = {(o.row, o.col): o for o in s.objects}
        r, c = anchor.row + step[0], anchor.col + step[1]
        while (r, c) not in cells:
            r, c = r + step[0], c + step[1]
        options = dict(re.findall(r"([ABCD])\. (\w+)", s.question))
        assert options[s.answer] == cells[(r, c)].colour


def test_rendered_cells_show_the_scene_colours():
    for s in generate_split(0, "render", 30, tuple(LEVELS)):
        img = render(s.objects, 112)
        for o in s.objects:
            # the centre of a circle or square, a point low in a triangle, is painted in the object's colour
            x, y = (o.col - 1) * 28 + 14, (o.row - 1) * 28 + (20 if o.shape == "triangle" else 14)
            if o.digit is not None:
                x -= 6  # beside the digit
            assert img.getpixel((x, y)) == COLOURS[o.colour], (o, img.getpixel((x, y)))
