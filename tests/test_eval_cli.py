import json

from observe_r1.cli import main


def test_eval_writes_json_and_markdown_with_levels_and_pass_at_k(tiny_model_dir, synth_dir, tmp_path, capsys):
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(synth_dir / "test.jsonl"), "--out", str(tmp_path),
            "--system-prompt", "none", "--max-new-tokens", "8", "--pass-k", "3", "--limit", "12"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    m = report["metrics"]
    assert m["count"] == 12 and len(report["records"]) == 12
    assert {"accuracy", "format_rate", "length_mean", "pass@3", "accuracy_sampled"} <= m.keys()
    assert 0 <= m["accuracy_sampled"] <= m["pass@3"] <= 1
    assert any(k.startswith("accuracy/level_") for k in m) and any(k.startswith("accuracy/skill_") for k in m)
    assert "| accuracy |" in (tmp_path / "eval.md").read_text() and "| accuracy |" in capsys.readouterr().out
