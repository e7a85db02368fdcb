"""Run `observe-r1 demo` for several seeds, each under /usr/bin/time -v, and summarise.

    python bench/demo_seeds.py --seeds 0 1 2 --out runs/demo_seeds [-- extra demo flags]
    python bench/demo_seeds.py --seeds 0 1 2 --out runs/real_demo -- --model smollm2   # the real-model demo

Resumable: a seed whose OUT/seedS/bench.json exists is not run again (--force runs it again), so a grid can
be finished over several sittings; a seed stopped half-way starts again from its beginning.
Prints (and writes OUT/results.md) a markdown table per seed: accuracy (strict and lenient) and format rate
before / after, mean length of correct responses, wall time and peak RSS, plus the mean accuracy gain with a
95% bootstrap interval over seeds.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

from observe_r1.recipes.ablate import bootstrap_interval


def run(seed: int, out: Path, extra: list[str], force: bool = False) -> dict:
    done = out / f"seed{seed}" / "bench.json"
    if done.is_file() and not force:
        print(f"seed {seed}: done before ({done})", flush=True)
        return json.loads(done.read_text())
    print(f"seed {seed}: running", flush=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "observe_r1.cli", "demo", "--out", str(out / f"seed{seed}"),
           "--seed", str(seed), *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed} failed:\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr).group(1)
    summary = json.loads((out / f"seed{seed}" / "summary.json").read_text())
    result = {**summary, "peak_rss_mb": rss_kb / 1024, "time_wall": wall, "command": " ".join(cmd[2:])}
    done.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/demo_seeds")
    parser.add_argument("--force", action="store_true", help="run seeds again that are done")
    args, extra = parser.parse_known_args()
    extra = [x for x in extra if x != "--"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [run(seed, out, extra, args.force) for seed in args.seeds]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    def num(x):
        return "-" if x is None else f"{x:.1f}"

    lines = [
        "| seed | accuracy before | accuracy after | gain (points) | lenient before | lenient after "
        "| format before | format after | correct length before | correct length after | wall (/usr/bin/time) "
        "| peak RSS (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    gains = []
    for r in results:
        gain = 100 * (r["accuracy_after"] - r["accuracy_before"])
        gains.append(gain)
        lines.append(
            f"| {r['seed']} | {pct(r['accuracy_before'])} | {pct(r['accuracy_after'])} | {gain:+.1f} "
            f"| {pct(r.get('accuracy_lenient_before'))} | {pct(r.get('accuracy_lenient_after'))} "
            f"| {pct(r['format_rate_before'])} | {pct(r['format_rate_after'])} "
            f"| {num(r['mean_length_correct_before'])} | {num(r['mean_length_correct_after'])} "
            f"| {r['time_wall']} | {r['peak_rss_mb']:.0f} |"
        )
    spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
    low, high = bootstrap_interval(gains)
    lines.append(
        f"\nMean gain: {statistics.mean(gains):+.1f} points (std {spread:.1f}; 95% bootstrap interval of the "
        f"mean [{low:+.1f}, {high:+.1f}]) over seeds {args.seeds}; the smallest {min(gains):+.1f}."
    )
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
