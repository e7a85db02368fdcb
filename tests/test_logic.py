import json
import random

from observe_r1.rewards.accuracy import accuracy_reward
from observe_r1.rewards.format import format_reward
from observe_r1.toy.logic import LEVELS, puzzle, write_dataset


def test_every_puzzle_has_exactly_one_solution_at_every_level():
    rng = random.Random(0)
    for people in LEVELS:
        for _ in range(20):
            names, statements, world, lines = puzzle(people, rng)
            assert len(names) == people and len(statements) == people and len(lines) == 2**people
            assert sum("every statement fits" in line for line in lines) == 1
            assert set(world) == set(names)


def test_rows_grade_their_own_reference_and_not_a_wrong_one(tmp_path):
    write_dataset(tmp_path, train=40, test=8, seed=1)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and {r["level"] for r in rows} == {1, 2, 3, 4}
    for row in rows:
        assert accuracy_reward(row["solution"], row["answer"]) == 1.0
        assert format_reward(row["solution"], "think") == 1.0
        flipped = row["answer"].replace("knight", "X").replace("knave", "knight").replace("X", "knave")
        assert accuracy_reward(f"<answer>{flipped}</answer>", row["answer"]) == 0.0
    assert (
        write_dataset(tmp_path / "again", 40, 8, seed=1).joinpath("train.jsonl").read_text()
        == (tmp_path / "train.jsonl").read_text()
    )
