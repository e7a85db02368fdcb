"""Asynchronous against synchronous rollouts (issue 27): trained tokens per second and the reward curve.

    python bench/async.py [--steps 16] [--seeds 0 1 2] [--size small] [--json] [--out runs/async_bench]

The same GRPO run (a random tiny Qwen2 text model, `bench/vs_trl.py`'s prompts and `digit_share` reward,
variable-length responses as in `bench/vs_trl.py --regime varlen`: every response's length is drawn from a
lognormal by a hash of its prompt and index and forced, so every mode generates and trains the same tokens)
as `observe-r1 train` processes, one after another:
  sync-2t   rollout.mode=sync, one process, 2 torch threads (the synchronous run at its best on 2 cores)
  sync-1t   the same with 1 thread
  async-k1  rollout.mode=async, max_staleness=1: the trainer and the engine process, 1 thread each
  async-k2  the same with max_staleness=2
  async-k1-behaviour  max_staleness=1 with rollout.correction=behaviour (no recomputed log-probs)
The lengths are forced in every process (the engine's too) by a `sitecustomize` on PYTHONPATH that applies
`vs_trl.force_lengths`. Step 0 (start-up) is not counted. Throughput = model tokens trained / the seconds of
the counted steps. The reward curve: each step's mean reward against the samples trained so far; the claim
"within noise" is tested on the mean reward of the last half of the steps, per seed, async minus sync-2t:
a paired t interval over the seeds (95%). Where the time goes: the trainer's wait for groups, the engine's
busy and idle seconds, the weight sync.

Each run is resumable at the grid level: a run whose metrics file has all its steps is not run again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODES = {
    "sync-2t": (["rollout.mode=sync"], 2),
    "sync-1t": (["rollout.mode=sync"], 1),
    "async-k1": (["rollout.mode=async", "rollout.max_staleness=1", "rollout.engine_threads=1"], 1),
    "async-k2": (["rollout.mode=async", "rollout.max_staleness=2", "rollout.engine_threads=1"], 1),
    "async-k1-behaviour": (
        [
            "rollout.mode=async",
            "rollout.max_staleness=1",
            "rollout.engine_threads=1",
            "rollout.correction=behaviour",
        ],
        1,
    ),
}
SITE = """import os
if os.environ.get("OBSERVE_R1_FORCE_LENGTHS"):
    import sys
    sys.path.insert(0, {here!r})
    from vs_trl import force_lengths
    max_new, median = os.environ["OBSERVE_R1_FORCE_LENGTHS"].split(",")
    force_lengths(int(max_new), float(median))
"""


def prepare(args: argparse.Namespace, root: Path) -> tuple[Path, Path, Path]:
    """The model, the prompts and the sitecustomize folder (built once into `root`)."""
    sys.path.insert(0, str(HERE))
    from vs_trl import prompts, write_data

    from observe_r1.toy.tiny import build_tiny_lm

    model, data, site = root / "model", root / "train.jsonl", root / "site"
    if not (model / "config.json").is_file():
        build_tiny_lm(model, args.size, 0)
    write_data(data, prompts(args.prompts * (args.steps + 4), 0))
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITE.format(here=str(HERE)))
    return model, data, site


def overrides(args: argparse.Namespace, model: Path, data: Path, out: Path, seed: int) -> list[str]:
    batch = args.prompts * args.n
    return [
        f"seed={seed}",
        f"model.path={model}",
        f"data.train=[{data}]",
        "data.test=[]",
        "data.system_prompt=none",
        "data.sampler=shuffled",
        f"rollout.n={args.n}",
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.max_new_tokens={args.tokens}",
        f"reward.terms=[{{name: '{HERE / 'vs_trl.py'}:digit_share'}}]",
        "reward.correct_term=digit_share",
        "reward.bonus_coef=0",
        "reward.workers=0",
        "algorithm.difficulty_weighting=false",
        "algorithm.kl_mode=off",
        "algorithm.loss_agg=token_mean",
        f"optim.lr={args.lr}",
        "optim.schedule=constant",
        "optim.warmup_ratio=0.0",
        f"optim.mini_batch_size={batch}",
        f"optim.micro_batch_size={args.micro}",
        f"optim.max_steps={args.steps}",
        f"logging.output_dir={out}",
        "logging.tensorboard=false",
        "logging.dump_rollouts_every=0",
        f"checkpoint.every={10**6}",
        "checkpoint.keep_last=1",
        "logging.eval_every=0",
        f"rollout.backend={args.backend}",
        "rollout.vllm.kv_cache_gb=1",
    ]


def steps_of(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if "actor/loss" in r]


def run(
    args: argparse.Namespace, mode: str, seed: int, model: Path, data: Path, site: Path, root: Path
) -> list[dict]:
    out = root / f"{mode}-seed{seed}"
    if len(steps_of(out)) == args.steps:
        return steps_of(out)
    shutil.rmtree(out, ignore_errors=True)  # an unfinished run starts again
    extra, threads = MODES[mode]
    env = os.environ | {
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": f"{site}{os.pathsep}{ROOT / 'src'}",
        "OBSERVE_R1_FORCE_LENGTHS": f"{args.tokens},{args.median_length}",
    }
    base = root / "base.yaml"
    base.write_text("{}\n")
    command = [
        sys.executable,
        "-m",
        "observe_r1.cli",
        "train",
        str(base),
        *overrides(args, model, data, out, seed),
        *extra,
    ]
    print(f"{mode} seed {seed} ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{mode} seed {seed} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return steps_of(out)


def summary(steps: list[dict]) -> dict:
    counted = steps[1:]
    tokens = sum(r["perf/generated_tokens"] for r in counted)
    seconds = sum(r["perf/step_s"] for r in counted)
    half = steps[len(steps) // 2 :]
    out = {
        "tokens_per_s": tokens / seconds,
        "step_s": statistics.median(r["perf/step_s"] for r in counted),
        "tokens_per_step": tokens / len(counted),
        "reward_curve": [round(r["reward/total/mean"], 4) for r in steps],
        "late_reward": statistics.mean(r["reward/total/mean"] for r in half),
    }
    for key in (
        "async/trainer_wait_s",
        "async/engine_busy_s",
        "async/engine_generate_s",
        "async/engine_idle_s",
        "async/weight_sync_s",
        "async/staleness",
        "time/update",
        "time/old_logprob",
        "time/rollout",
        "time/sync",
    ):
        if key in counted[0]:
            out[key] = statistics.mean(r[key] for r in counted)
    return out


def paired_interval(diffs: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t interval of paired differences (t quantiles for up to 9 degrees of freedom)."""
    t = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, -math.inf, math.inf
    half = t.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/async_bench")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--size", default="small", help="tiny model size (observe_r1.toy.tiny.SIZES)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128, help="max new tokens")
    p.add_argument("--median-length", type=float, default=48.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument(
        "--backend", choices=["hf", "vllm"], default="hf", help="vllm: in the vLLM venv (docs/rollout.md)"
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    model, data, site = prepare(args, root)
    runs = {m: {s: summary(run(args, m, s, model, data, site, root)) for s in args.seeds} for m in args.modes}
    result: dict = {"cpu": os.cpu_count(), "settings": {k: v for k, v in vars(args).items() if k != "json"}}
    for m, by_seed in runs.items():
        result[m] = {
            "tokens_per_s": round(statistics.mean(r["tokens_per_s"] for r in by_seed.values()), 1),
            "late_reward": round(statistics.mean(r["late_reward"] for r in by_seed.values()), 4),
            "per_seed": by_seed,
        }
    base = "sync-2t" if "sync-2t" in runs else args.modes[0]
    for m in runs:
        if m == base:
            continue
        result[m]["speedup_vs_" + base] = round(result[m]["tokens_per_s"] / result[base]["tokens_per_s"], 3)
        diffs = [runs[m][s]["late_reward"] - runs[base][s]["late_reward"] for s in args.seeds]
        mean, low, high = paired_interval(diffs)
        result[m]["late_reward_minus_" + base] = {
            "mean": round(mean, 4),
            "ci95": [round(low, 4), round(high, 4)],
            "within_noise": low <= 0 <= high,
        }
    if args.json:
        print(json.dumps(result))
    else:
        for m in runs:
            extra = {k: v for k, v in result[m].items() if k != "per_seed"}
            print(m, extra)


if __name__ == "__main__":
    main()
