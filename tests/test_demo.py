"""A short `observe-r1 demo` on the shipped cold-start checkpoint (tiny sizes; the full run is docs/results.md)."""

import json

import pytest
import yaml

from observe_r1.cli import main


def words(text: str) -> list[str]:
    return text.split()


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
    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", str(tmp_path), "--levels", "1,7"])
    assert e.value.code == 2 and "unknown level(s) [7]" in capsys.readouterr().err


def test_ablate_resumes_finished_runs_and_restarts_on_other_settings(tmp_path):
    out = tmp_path / "ablate"
    sizes = words("--pool 16 --test 8 --steps 1 --eval-every 1 --k 2 rollout.max_new_tokens=96")
    args = ["ablate", "--out", str(out), "--seeds", "0", "--variants", "a", *sizes]
    assert main(args) == 0
    metrics = out / "seed0" / "a" / "metrics.jsonl"
    first = metrics.stat().st_mtime_ns
    assert main([*args[:6], "ae", *args[7:]]) == 0  # (a) is read back, only (e) runs
    assert metrics.stat().st_mtime_ns == first and (out / "seed0" / "e" / "curve.json").is_file()
    assert list(json.loads((out / "ablation.json").read_text())["variants"]) == ["a", "e"]
    assert main([*args[:-1], "rollout.max_new_tokens=80"]) == 0  # other settings: the seed starts afresh
    assert metrics.stat().st_mtime_ns != first and not (out / "seed0" / "e").exists()


def test_ablation_claims_are_paired_by_seed_with_a_verdict():
    from observe_r1.recipes.ablate import CLAIMS, bootstrap_interval, claim, summarise
    from observe_r1.recipes.options import AblationOptions

    def run(final, length):
        return {"steps": [0, 10, 20], "accuracy": [0.3, (0.3 + final) / 2, final], "length_correct": length}

    runs = {  # (e) beats (d) on every seed; (c) is not shorter than (b) on every seed; (d) = (c) + noise
        "a": {s: run(0.40 + 0.01 * s, 50.0) for s in range(5)},
        "b": {s: run(0.41 + 0.01 * s, 50.0 + (-1) ** s * 3) for s in range(5)},
        "c": {s: run(0.41 + 0.01 * s, 50.0) for s in range(5)},
        "d": {s: run(0.42 + 0.01 * s + (-1) ** s * 0.02, 48.0) for s in range(5)},
        "e": {s: run(0.50 + 0.01 * s, 47.0) for s in range(5)},
    }
    summary = summarise(AblationOptions(out="x", seeds=range(5)), runs)
    verdicts = {(c["compare"], c["measure"]): c["verdict"] for c in summary["claims"]}
    assert verdicts[("(e) - (d)", "final accuracy")] == "supported"
    assert verdicts[("(c) - (b)", "mean length of correct responses")] == "inconclusive at this scale"
    assert ("(c) - (a)", "mean length of correct responses") not in verdicts  # only without (b)
    e_vs_d = next(c for c in summary["claims"] if c["compare"] == "(e) - (d)")
    assert e_vs_d["per_seed"] == pytest.approx([0.08 - (-1) ** s * 0.02 for s in range(5)])
    low, high = summary["variants"]["e"]["final_interval"]
    assert 0.50 <= low < high <= 0.54
    no_b = {k: v for k, v in runs.items() if k != "b"}
    worse = {**no_b, "c": {s: run(0.41, 60.0) for s in range(5)}}  # the bonus made them longer
    bonus_vs_a = next(c for c in CLAIMS if c.better == "c" and c.worse == "a")
    assert claim(bonus_vs_a, worse)["verdict"] == "contradicted"
    assert bootstrap_interval([0.2]) == [0.2, 0.2]


def test_the_real_model_demo_on_a_tiny_gguf_model(tmp_path, capsys):
    """`demo --model smollm2` with the cache holding a tiny imported GGUF llama in place of SmolLM2: the
    format cold start, the base-model evaluations (with and without the prompt), the evaluation before RL and
    the ladder. A random model solves nothing, so its ladder is empty and the demo stops there saying so (the
    GRPO stage of this config is measured on the real model: docs/results.md)."""
    from observe_r1.models.gguf import import_gguf
    from observe_r1.recipes.demo import demo_config
    from observe_r1.recipes.options import demo_options
    from tests.test_gguf import write_tiny_gguf

    cache = tmp_path / "cache"
    import_gguf(write_tiny_gguf(tmp_path / "tiny.gguf"), cache / "base")
    out = tmp_path / "demo"
    sizes = words("--pool 8 --test 4 --val 2 --steps 1 --eval-every 1 --k 2 rollout.max_new_tokens=16")
    args = [
        "demo",
        "--model",
        "smollm2",
        "--cache",
        str(cache),
        "--out",
        str(out),
        *sizes,
        "data.max_prompt_length=1024",
    ]
    assert main(args) == 2
    assert "ladder.jsonl: no rows" in capsys.readouterr().out.replace("\n", "")
    assert (cache / "cold_start" / "model.safetensors").is_file()
    assert (cache / "cold_start_run" / "metrics.jsonl").is_file()
    for name in ("eval_base_none", "eval_base_think", "eval_before"):
        metrics = json.loads((out / name / "eval.json").read_text())["metrics"]
        assert {"accuracy", "accuracy_lenient", "format_rate"} <= metrics.keys()
    rows = [json.loads(x) for x in (out / "data" / "test.jsonl").read_text().splitlines()]
    assert {r["level"] for r in rows} == {1, 2, 3} and all(
        isinstance(r["messages"][0]["content"], str) for r in rows
    )
    opts = demo_options(out, "smollm2", steps=None)
    assert (opts.steps, opts.pool, opts.levels) == (60, 160, (1, 2, 3))
    cfg = demo_config(opts)
    assert [t.name for t in cfg.reward.terms] == [
        "accuracy",
        "think_format",
    ] and cfg.algorithm.difficulty_weighting
    assert cfg.data.sampler == "sequential" and cfg.rollout.temperature == 0.7
