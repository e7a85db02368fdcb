"""The arithmetic word problems of the real-model demo: gold by construction, levels as documented,
splits that share no question, rows in the native text layout that the dataset loader and the grader read."""

from __future__ import annotations

import json
import random
import re

import pytest

from observe_r1.rewards.accuracy import grade
from observe_r1.toy.arith import LEVELS, generate, problem, write_dataset


def solve(question: str) -> int:
    """An independent reading of the question: the numbers and verbs, left to right."""
    bags = re.search(r"buys (\d+) bags of (\d+)", question)
    value = int(bags[1]) * int(bags[2]) if bags else int(re.search(r"has (\d+)", question)[1])
    for amount, verb in re.findall(r"(?:gets|gives) (\d+) (more|away)", question):
        value += int(amount) if verb == "more" else -int(amount)
    return value


@pytest.mark.parametrize("level", LEVELS)
def test_gold_is_what_the_question_says(level):
    rng = random.Random(level)
    for _ in range(200):
        p = problem(rng, level)
        assert p.answer == solve(p.question), p.question
        assert p.answer >= 1 and p.level == level


def test_levels_add_steps_and_bigger_numbers():
    rng = random.Random(0)
    numbers = {
        lv: [int(x) for _ in range(100) for x in re.findall(r"\d+", problem(rng, lv).question)]
        for lv in LEVELS
    }
    steps = {lv: {len(problem(rng, lv).steps) for _ in range(100)} for lv in LEVELS}
    assert max(numbers[1]) <= 9 and max(numbers[3]) <= 9 and max(numbers[4]) <= 9
    assert min(numbers[2]) >= 1 and max(numbers[2]) >= 10 and max(numbers[5]) >= 10
    assert steps == {1: {1}, 2: {1}, 3: {2}, 4: {1}, 5: {2}, 6: {2}}


def test_the_worked_solution_earns_full_accuracy_and_its_steps_are_true():
    rng = random.Random(1)
    for lv in LEVELS:
        p = problem(rng, lv)
        for step in p.steps:
            a, op, b, _, result = step.split()
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op] == int(result)
        row = json.loads(json.dumps(write_row(p)))
        assert grade(row["solution"], row["answer"]).score == 1.0


def write_row(p):
    from observe_r1.toy.arith import row

    return row("x", p)


def test_splits_share_no_question_and_are_reproducible(tmp_path):
    paths = write_dataset(tmp_path / "a", 120, 60, seed=3, val=30)
    rows = {k: [json.loads(x) for x in v.read_text().splitlines()] for k, v in paths.items()}
    questions = {k: {r["messages"][0]["content"] for r in v} for k, v in rows.items()}
    assert [len(questions[k]) for k in ("train", "test", "val")] == [120, 60, 30]
    assert not questions["train"] & questions["test"] and not questions["val"] & (
        questions["train"] | questions["test"]
    )
    again = write_dataset(tmp_path / "b", 120, 60, seed=3, val=30)
    assert all(paths[k].read_text() == again[k].read_text() for k in paths)
    assert {r["level"] for r in rows["test"]} == set(LEVELS)  # levels in turn
    assert rows["test"][0].keys() == {"id", "messages", "answer", "solution", "level", "skill"}


def test_a_level_subset_and_impossible_requests():
    assert {p.level for p in generate(0, "train", 30, levels=(2, 3))} == {2, 3}
    with pytest.raises(ValueError, match="unknown level"):
        problem(random.Random(0), 7)
    with pytest.raises(ValueError, match="cannot draw"):
        generate(0, "train", 10_000, levels=(1,))  # level 1 has only 81 x 12 x 10 distinct questions


def test_the_loader_reads_the_rows_as_text_samples(tmp_path, tiny_model_dir):
    from observe_r1.data.dataset import load_samples
    from observe_r1.models.inputs import ChatEncoder

    paths = write_dataset(tmp_path, 12, 6, seed=0, levels=(1, 2, 3))
    encoder = ChatEncoder.from_pretrained(tiny_model_dir, max_prompt_length=256)
    samples = load_samples([str(paths["test"])], encoder, "")
    assert len(samples) == 6 and all(not s.images for s in samples)
    assert samples[0].answer == json.loads(paths["test"].read_text().splitlines()[0])["answer"]
