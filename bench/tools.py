"""A tool that helps: the same GRPO run on `toolcalc` (multiplying 2- to 4-digit numbers) with and without
the `python` tool, each from its own cold start, evaluated greedily on held-out items.

    python bench/tools.py [--json] [--out runs/tools_bench] [--sft-steps 1000] [--grpo-steps 40]

  tools     a tiny `small` Qwen2.5-VL (random), SFT on tool-using trajectories (`solution`:
            <think><code>print(a * b)</code><output>...</output></think><answer>..</answer>, the outputs masked),
            then GRPO with multi-turn rollouts (the code layout, the sandboxed python tool)
  direct    the same model, SFT on the same answers without the tool (`solution_direct`), then GRPO without it
Both: the same data, seeds, learning rates and steps (configs/tools_cpu.yaml's settings at length). Resumable:
a finished stage (its folder's summary) is read back. Prints a table and, with --json, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from observe_r1.config import load_config
from observe_r1.recipes.grpo import train
from observe_r1.recipes.sft import sft
from observe_r1.toy import toolcalc
from observe_r1.toy.tiny import build_tiny_vlm

ROOT = Path(__file__).resolve().parent.parent
NO_TOOLS = ["rollout.multi_turn.enabled=false", "tools.names=[]",
            "reward.terms=[{name: accuracy, weight: 1.0}, {name: think_format, weight: 0.5}]"]  # fmt: skip


def last_eval(run: Path) -> dict[str, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return next(
        {k: v for k, v in r.items() if k.startswith("eval/")} for r in reversed(rows) if "eval/accuracy" in r
    )


def stage(out: Path, name: str, run) -> dict:
    """Run `run(folder)` once; its summary (eval metrics and seconds) is kept in FOLDER/summary.json."""
    folder = out / name
    done = folder / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    started = time.perf_counter()
    run(folder)
    summary = {**last_eval(folder), "seconds": round(time.perf_counter() - started, 1)}
    done.write_text(json.dumps(summary))
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/tools_bench")
    p.add_argument("--size", choices=["tiny", "small"], default="small")
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--test", type=int, default=150)
    p.add_argument("--sft-steps", type=int, default=1000)
    p.add_argument("--grpo-steps", type=int, default=40)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = toolcalc.write_dataset(out / "data", args.train, args.test, seed=args.seed)
    base = out / "base-model"
    if not (base / "config.json").is_file():
        build_tiny_vlm(base, size=args.size, seed=args.seed)
    common = [f"seed={args.seed}", f"data.train=[{data['train']}]", f"data.test=[{data['test']}]",
              "data.system_prompt=none", "data.sampler=shuffled", "checkpoint.every=100000",
              f"rollout.n={args.n}", f"rollout.prompts_per_step={args.prompts}",
              f"optim.mini_batch_size={args.prompts * args.n}", f"optim.micro_batch_size={min(16, args.prompts * args.n)}",
              "logging.dump_rollouts_every=0", "logging.tensorboard=false"]  # fmt: skip
    config = ROOT / "configs" / "tools_cpu.yaml"
    result: dict = {"settings": vars(args)}
    for name, extra, column in (("tools", [], "solution"), ("direct", NO_TOOLS, "solution_direct")):

        def cold(folder: Path, extra=extra, column=column) -> None:
            sft(load_config(config, [*common, *extra, f"model.path={base}", f"logging.output_dir={folder}",
                                     f"sft.response_column={column}", f"optim.max_steps={args.sft_steps}",
                                     "optim.lr=2e-3", "optim.min_lr=2e-5", "optim.warmup_ratio=0.03"]),
                export=folder / "model")  # fmt: skip

        def rl(folder: Path, extra=extra, start=out / f"{name}-cold" / "model") -> None:
            train(load_config(config, [*common, *extra, f"model.path={start}", f"logging.output_dir={folder}",
                                       f"optim.max_steps={args.grpo_steps}", "optim.lr=1e-4", "optim.min_lr=1e-4"]))  # fmt: skip

        before = stage(out, f"{name}-cold", cold)
        after = stage(out, f"{name}-grpo", rl)
        result[name] = {"accuracy_cold_start": before["eval/accuracy"], "accuracy_after_grpo": after["eval/accuracy"],
                        "format_rate_after_grpo": after.get("eval/format_rate"),
                        "per_level_after_grpo": {k: v for k, v in after.items() if "/level_" in k},
                        "sft_seconds": before["seconds"], "grpo_seconds": after["seconds"]}  # fmt: skip
    result["gain_of_the_tool_points"] = round(
        100 * (result["tools"]["accuracy_after_grpo"] - result["direct"]["accuracy_after_grpo"]), 1
    )
    print("| run | cold start | after GRPO | format after |\n| --- | --- | --- | --- |")
    for name in ("tools", "direct"):
        r = result[name]
        print(f"| {name} | {r['accuracy_cold_start']:.1%} | {r['accuracy_after_grpo']:.1%} | "
              f"{r['format_rate_after_grpo']:.1%} |")  # fmt: skip
    print(f"\nthe tool's gain after GRPO: {result['gain_of_the_tool_points']:+.1f} points")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
