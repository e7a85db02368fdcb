"""A short `observe-r1 demo` on the shipped cold-start checkpoint (tiny sizes; the full run is docs/results.md)."""

import json

from observe_r1.cli import main


def test_short_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--seed", "1", "--pool", "16", "--test", "16", "--steps", "2", "--k", "2",
            "rollout.max_new_tokens=96"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("accuracy_before", "accuracy_after", "format_rate_before", "format_rate_after",
                "mean_length_correct_before", "mean_length_correct_after", "steps", "wall_seconds"):  # fmt: skip
        assert key in summary
    assert summary["steps"] == 2 and 0 <= summary["accuracy_after"] <= 1
    for name in (
        "report.md",
        "training.png",
        "levels.png",
        "ladder.png",
        "ladder.jsonl",
        "ladder.summary.md",
    ):
        assert (out / name).is_file(), name
    assert "| accuracy |" in (out / "report.md").read_text()
    assert "before (cold start)" in capsys.readouterr().out


def test_demo_starts_afresh(tmp_path):
    from observe_r1.recipes.demo import clear

    (tmp_path / "grpo" / "checkpoints").mkdir(parents=True)
    (tmp_path / "ladder.scores.jsonl").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    clear(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
