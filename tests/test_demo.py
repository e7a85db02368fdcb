"""A short `observe-r1 demo` on the shipped cold-start checkpoint (tiny sizes; the full run is docs/results.md)."""

import json

import yaml

from observe_r1.cli import main


def test_short_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--seed", "1", "--pool", "16", "--test", "16", "--steps", "2", "--k", "2",
            "--levels", "1,3", "--val", "8", "--eval-every", "1", "rollout.max_new_tokens=96"]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(x) for x in (out / "data" / "test.jsonl").read_text().splitlines()]
    assert {r["level"] for r in rows} == {1, 3}
    summary = json.loads((out / "summary.json").read_text())
    for key in ("accuracy_before", "accuracy_after", "format_rate_before", "format_rate_after",
                "mean_length_correct_before", "mean_length_correct_after", "steps", "wall_seconds"):  # fmt: skip
        assert key in summary
    assert summary["steps"] == 2 and 0 <= summary["accuracy_after"] <= 1
    # "after" is the checkpoint the validation split chose; the last one is reported beside it
    vals = [json.loads(x) for x in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    vals = {r["step"] + 1: r["eval/accuracy"] for r in vals if "eval/accuracy" in r}
    assert sorted(vals) == [1, 2] and summary["val_accuracy_best"] == max(vals.values())
    assert vals[summary["best_step"]] == max(vals.values()) and 0 <= summary["accuracy_last"] <= 1
    assert summary["checkpoint"].endswith("checkpoints/best")
    assert {
        r["level"] for r in (json.loads(x) for x in (out / "data" / "val.jsonl").read_text().splitlines())
    } <= {1, 3}
    for name in (
        "report.md",
        "training.png",
        "levels.png",
        "ladder.png",
        "ladder.jsonl",
        "ladder.summary.md",
    ):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "| accuracy |" in report and f"the checkpoint of step {summary['best_step']}" in report
    assert "before (cold start)" in capsys.readouterr().out


def test_demo_starts_afresh(tmp_path):
    from observe_r1.recipes.demo import clear

    (tmp_path / "grpo" / "checkpoints").mkdir(parents=True)
    (tmp_path / "ladder.scores.jsonl").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    clear(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_ablate_runs_variants_and_writes_table_and_plot(tmp_path, capsys):
    out = tmp_path / "ablate"
    args = ["ablate", "--out", str(out), "--seeds", "0", "--variants", "ae", "--pool", "16", "--test", "8",
            "--steps", "2", "--eval-every", "1", "--k", "2", "rollout.max_new_tokens=96"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "ablation.json").read_text())
    assert list(summary["variants"]) == ["a", "e"]
    a = summary["variants"]["a"]
    assert (
        a["curve_steps"] == [0, 1, 2]
        and len(a["curve_mean"]) == 3
        and a["steps_to_baseline_final"] is not None
    )
    assert (out / "ablation.png").is_file() and "| (e) + ladder in order" in (out / "ablation.md").read_text()
    metrics = [json.loads(x) for x in (out / "seed0" / "a" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/think_format/mean" in r for r in metrics)
    cfg = yaml.safe_load((out / "seed0" / "a" / "config.yaml").read_text())
    assert cfg["data"]["sampler"] == "shuffled" and cfg["reward"]["bonus_coef"] == 0
    assert "(a) GRPO" in capsys.readouterr().out


def test_demo_refuses_an_unknown_level(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", str(tmp_path), "--levels", "1,7"])
    assert e.value.code == 2 and "unknown level(s) [7]" in capsys.readouterr().err
