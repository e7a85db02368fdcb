import json
import random

import pytest

from observe_r1.data.ladder import Item, build_ladder, clean, levels, mix, subsample, summary


def items(spec):
    """spec: {difficulty: count}; complexity = 10 * difficulty level + position (distinct, increasing)."""
    out = []
    for d, n in spec.items():
        out += [Item(f"d{d}-{i}", d, 100 * d + i) for i in range(n)]
    random.Random(0).shuffle(out)
    return out


def test_review_and_drop_rules():
    data = [Item("hard", 1.0, 50), Item("trivial", 0.0, 3), Item("easy-long", 0.0, 40), Item("mid", 0.5, 10)]
    kept, review, dropped = clean(data, min_complexity=20)
    assert [i.key for i in review] == ["hard"] and [i.key for i in dropped] == ["trivial"]
    assert {i.key for i in kept} == {"easy-long", "mid"}
    ladder = build_ladder(data, min_complexity=20)
    assert [i.key for i in ladder.review] == ["hard"] and "hard" not in {i.key for i, _ in ladder.rows}
    kept = build_ladder(data, min_complexity=20, keep_unsolved=True, own_share=1.0)
    assert not kept.review and kept.rows[-1][0].key == "hard" and kept.stages[-1] == 1.0


def test_levels_are_easy_first_and_by_complexity():
    groups = levels(items({0.5: 3, 0.125: 4, 0.75: 2}))
    assert [g[0].difficulty for g in groups] == [0.125, 0.5, 0.75]
    for g in groups:
        assert [i.complexity for i in g] == sorted(i.complexity for i in g)


def test_without_mixing_the_order_is_difficulty_then_complexity():
    ladder = build_ladder(items({0.25: 5, 0.5: 5, 0.75: 5}), own_share=1.0)
    keys = [(i.difficulty, i.complexity) for i, _ in ladder.rows]
    assert keys == sorted(keys)


def test_mixing_shares_and_which_items_move():
    groups = levels(items({0.25: 10, 0.5: 10, 0.75: 10}))
    stages = mix(groups, 0.6, random.Random(0))
    assert [len(s) for s in stages] == [10, 10, 10]
    assert sorted(i.key for s in stages for i in s) == sorted(i.key for g in groups for i in g)  # each once
    own = [sum(i.difficulty == d for i in s) / len(s) for s, d in zip(stages, (0.25, 0.5, 0.75), strict=True)]
    assert own == [0.8, 0.6, 0.8]
    # level 0.5 sends its 2 least complex items down and its 2 most complex up
    assert sorted(i.complexity for i in stages[0] if i.difficulty == 0.5) == [50, 51]
    assert sorted(i.complexity for i in stages[2] if i.difficulty == 0.5) == [58, 59]
    means = [sum(i.difficulty for i in s) / len(s) for s in stages]
    assert means == sorted(means)  # still a ramp


def test_per_level_proportions_keep_the_largest_exact_subset():
    groups = levels(items({0.25: 10, 0.5: 10, 0.75: 10}))
    kept, dropped = subsample(groups, [1, 2, 4], random.Random(0))
    assert [len(g) for g in kept] == [2, 5, 10] and len(dropped) == 13
    with pytest.raises(ValueError, match="3 proportions for 2 difficulty levels"):
        subsample(groups[:2], [1, 2, 4], random.Random(0))


def test_summary_and_levels_of_rows():
    ladder = build_ladder(items({0.0: 4, 0.5: 8, 0.875: 6}), own_share=0.5, seed=3)
    rows = summary(ladder)
    assert [r["size"] for r in rows] == [5, 7, 6]  # 4 - 1 + 2, 8 - 4 + 1 + 2, 6 - 2 + 2
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert [lv for _, lv in ladder.rows] == sorted(lv for _, lv in ladder.rows)  # stages in order
    assert ladder.stages == [0.0, 0.5, 0.875]


def test_ladder_build_cli_writes_everything_and_resumes(tiny_model_dir, synth_dir, tmp_path):
    from observe_r1.cli import main

    out = tmp_path / "ladder.jsonl"
    args = ["ladder", "build", "--data", str(synth_dir / "test.jsonl"), "--model", str(tiny_model_dir), "--out", str(out),
            "--k", "2", "--max-new-tokens", "8", "--system-prompt", "none", "--batch-size", "8"]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    review = [json.loads(x) for x in out.with_suffix(".review.jsonl").read_text().splitlines()]
    assert len(rows) + len(review) == 20  # a random model: nearly everything is difficulty 1, for review
    for r in rows + review:
        assert {"difficulty", "complexity", "source_level", "answer", "messages"} <= r.keys()
    assert all("level" in r for r in rows)
    assert (
        out.with_suffix(".png").stat().st_size > 1000
        and "| stage |" in out.with_suffix(".summary.md").read_text()
    )
    scores = out.with_suffix(".scores.jsonl").read_text()
    assert len(scores.splitlines()) == 20
    assert main(args) == 0  # a second build reuses every score
    assert out.with_suffix(".scores.jsonl").read_text() == scores
