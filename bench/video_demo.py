"""GRPO on video: the demo pipeline (`recipes/demo.py`, `--model video`) on the synthetic clips of
`observe_r1.toy.video` (which way a shape moves, how often it blinks, which appears first), from a `small` tiny
Qwen2.5-VL after a video cold start (made once in the cache, `video_cold_start.yaml`, not counted in the GRPO
time). Held-out greedy accuracy before (the cold start) and after GRPO (the checkpoint the validation split
picks), per seed.

    python bench/video_demo.py [--json] [--seeds 0 1 2] [--out runs/video_demo] [--cache runs/video]

A finished seed (its summary.json) is read back: the grid can be completed over several sittings.
Prints a table and, with --json, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from observe_r1.recipes.demo import run_demo, video_cold_start
from observe_r1.recipes.options import DemoOptions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/video_demo")
    p.add_argument("--cache", default="runs/video", help="the cold start is made here once")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--pool", type=int, default=240, help="training items scored for the ladder")
    p.add_argument("--test", type=int, default=150)
    p.add_argument("--val", type=int, default=60)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    started = time.perf_counter()
    video_cold_start(Path(args.cache))
    cold_start_s = round(time.perf_counter() - started, 1)
    runs = []
    for seed in args.seeds:
        out = Path(args.out) / f"seed{seed}"
        done = out / "summary.json"
        if not done.is_file():
            opts = DemoOptions(
                out=out,
                seed=seed,
                pool=args.pool,
                test=args.test,
                steps=args.steps,
                val=args.val,
                eval_every=args.eval_every,
                model="video",
                cache=Path(args.cache),
            )
            run_demo(opts)
        summary = json.loads(done.read_text())
        runs.append(
            {
                "seed": seed,
                "before": summary["accuracy_before"],
                "after": summary["accuracy_after"],
                "gain_points": round(100 * (summary["accuracy_after"] - summary["accuracy_before"]), 1),
                "per_level_before": summary["per_level_before"],
                "per_level_after": summary["per_level_after"],
                "format_after": summary["format_rate_after"],
                "wall_s": summary["wall_seconds"],
                "grpo_s": summary["stage_seconds"].get("grpo"),
            }
        )
    gains = [r["gain_points"] for r in runs]
    result = {
        "runs": runs,
        "mean_gain_points": round(statistics.mean(gains), 1),
        "cold_start_s": cold_start_s,
    }
    for r in runs:
        print(
            f"seed {r['seed']}: {100 * r['before']:.1f}% -> {100 * r['after']:.1f}% ({r['gain_points']:+.1f}), "
            f"demo wall {r['wall_s']:.0f} s (GRPO {r['grpo_s']:.0f} s)"
        )
    print(f"mean gain {result['mean_gain_points']:+.1f} points over {len(runs)} seed(s)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
