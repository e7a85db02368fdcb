"""`observe-r1 ablate`: the paper's ablation on the synthetic ladder, from the shipped cold start.

Five variants, each adding one part of the recipe to the one before, at equal step budgets and on the same
ladder items (only their order differs in (e)):
  (a) GRPO, think/answer format reward, items shuffled
  (b) + observe/think/answer format reward
  (c) + the shortest-correct bonus
  (d) + difficulty weighting f(d)
  (e) + the ladder in order (easy to hard) = the full Observe-R1 recipe
Per seed: synthetic data as in `observe-r1 demo`, the cold start evaluated once (step 0), the NeuraLadder
built once, then the five GRPO runs, each evaluated greedily on the held-out split every `eval_every`
steps. Writes OUT/ablation.md, OUT/ablation.json and OUT/ablation.png (accuracy vs step).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from observe_r1.recipes.demo import clear, cold_start_path, demo_config, grpo_config
from observe_r1.recipes.evaluate import evaluate_checkpoint
from observe_r1.recipes.grpo import train
from observe_r1.recipes.ladder import build
from observe_r1.recipes.options import AblationOptions, DemoOptions
from observe_r1.toy.synth import write_dataset

BASE = ["data.sampler=shuffled", "reward.bonus_coef=0", "algorithm.difficulty_weighting=false",
        "reward.terms=[{name: accuracy, weight: 1.0}, {name: think_format, weight: 0.5}]"]  # fmt: skip
OBSERVE = "reward.terms=[{name: accuracy, weight: 1.0}, {name: observe_format, weight: 0.5}]"
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "a": ("GRPO, think format, shuffled", BASE),
    "b": ("+ observe format", [*BASE, OBSERVE]),
    "c": ("+ bonus", [*BASE, OBSERVE, "reward.bonus_coef=0.2"]),
    "d": ("+ dynamic weighting", [*BASE, OBSERVE, "reward.bonus_coef=0.2", "algorithm.difficulty_weighting=true"]),
    "e": ("+ ladder in order (Observe-R1)", [*BASE, OBSERVE, "reward.bonus_coef=0.2",
                                            "algorithm.difficulty_weighting=true", "data.sampler=sequential"]),
}  # fmt: skip


def run_ablation(opts: AblationOptions, overrides: Sequence[str] = (), console: Any = None) -> dict[str, Any]:
    unknown = set(opts.variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; choose from {''.join(VARIANTS)}")
    model = cold_start_path()
    runs: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in opts.variants}
    for seed in opts.seeds:
        root = Path(opts.out) / f"seed{seed}"
        cfg = demo_config(DemoOptions(out=root, seed=seed, k=opts.k), overrides)
        clear(root)  # a previous ablation's data, ladder and scores must not be picked up
        paths = write_dataset(root / "data", opts.pool, opts.test, seed=10_000 + seed, levels=opts.levels)
        if console is not None:
            console.rule(f"[bold]seed {seed}: cold start, ladder")
        before, _ = evaluate_checkpoint(model, [str(paths["test"])], cfg.data.system_prompt, cfg.rollout.max_new_tokens, 50)  # fmt: skip
        ladder = root / "ladder.jsonl"
        build(cfg, [str(paths["train"])], str(model), ladder)
        for v in opts.variants:
            if console is not None:
                console.rule(f"[bold]seed {seed}: ({v}) {VARIANTS[v][0]}")
            run_dir = root / v
            vcfg = demo_config(DemoOptions(out=root, seed=seed, k=opts.k), [*VARIANTS[v][1], *overrides])
            train(
                grpo_config(vcfg, model, ladder, opts.steps, run_dir, [str(paths["test"])], opts.eval_every)
            )
            runs[v][seed] = curve(run_dir / "metrics.jsonl", before)
    summary = summarise(opts, runs)
    out = Path(opts.out)
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    (out / "ablation.md").write_text(markdown(summary))
    plot(summary, out / "ablation.png")
    return summary


def curve(metrics: Path, before: dict[str, float]) -> dict[str, Any]:
    """Held-out accuracy by step (step 0 = the cold start) and the final mean length of correct responses."""
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    evals = [r for r in rows if "eval/accuracy" in r]
    steps = [0] + [int(r["step"]) + 1 if "perf/step_s" in r else int(r["step"]) for r in evals]
    return {
        "steps": steps,
        "accuracy": [before["accuracy"]] + [r["eval/accuracy"] for r in evals],
        "length_correct": evals[-1].get("eval/length_correct_mean") if evals else None,
    }


def summarise(opts: AblationOptions, runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()}
    }
    variants: dict[str, dict[str, Any]] = {}
    for key, by_seed in runs.items():
        finals = [r["accuracy"][-1] for r in by_seed.values()]
        lengths = [r["length_correct"] for r in by_seed.values() if r["length_correct"] is not None]
        steps = next(iter(by_seed.values()))["steps"]
        mean_curve = [statistics.mean(r["accuracy"][i] for r in by_seed.values()) for i in range(len(steps))]
        variants[key] = {
            "name": VARIANTS[key][0],
            "final_mean": statistics.mean(finals),
            "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "final_per_seed": {str(s): r["accuracy"][-1] for s, r in by_seed.items()},
            "start_mean": mean_curve[0],
            "curve_steps": steps,
            "curve_mean": mean_curve,
            "length_correct_mean": statistics.mean(lengths) if lengths else None,
        }
    first = next(iter(variants.values()))
    target = first["final_mean"]  # the baseline's final accuracy
    for row in variants.values():
        reached = [
            s for s, a in zip(row["curve_steps"], row["curve_mean"], strict=True) if s > 0 and a >= target
        ]
        row["steps_to_baseline_final"] = reached[0] if reached else None
    out["variants"] = variants
    return out


def markdown(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    lines = [
        f"# Ablation: {len(s['seeds'])} seeds x {len(summary['variants'])} variants, {s['steps']} GRPO steps each",
        "",
        "| variant | held-out accuracy, final (mean +- std) | per seed | cold start | steps to the baseline's "
        "final accuracy | mean length of correct responses |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, v in summary["variants"].items():
        per_seed = ", ".join(f"{100 * a:.1f}" for a in v["final_per_seed"].values())
        reached = "-" if v["steps_to_baseline_final"] is None else str(v["steps_to_baseline_final"])
        length = "-" if v["length_correct_mean"] is None else f"{v['length_correct_mean']:.1f}"
        lines.append(
            f"| ({key}) {v['name']} | {100 * v['final_mean']:.1f} +- {100 * v['final_std']:.1f} | {per_seed} "
            f"| {100 * v['start_mean']:.1f} | {reached} | {length} |"
        )
    return "\n".join(lines) + "\n\n![accuracy vs step](ablation.png)\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for key, v in summary["variants"].items():
        ax.plot(
            v["curve_steps"], [100 * a for a in v["curve_mean"]], marker=".", label=f"({key}) {v['name']}"
        )
    ax.set(xlabel="GRPO step", ylabel="held-out accuracy (%), mean over seeds", title="Ablation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
