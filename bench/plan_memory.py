"""The memory planner against real training steps on this CPU: predicted vs measured peak memory per process.

    python bench/plan_memory.py [--model small | --like CONFIG_JSON --layers 1 --vision-layers 1]
                                [--strategy ddp fsdp] [--procs 2] [--json]

For each strategy, `observe-r1 train` runs 2 GRPO steps (`--procs` processes under torchrun; KL reference on)
and every training process's peak resident memory during the steps is read from the kernel (`VmHWM` in
/proc/PID/status, reset through /proc/PID/clear_refs when training starts, read until step 2 is logged: the
exact high-water mark, not a sample). Loading the model and writing the final checkpoint are left out: on a
GPU machine both happen in host memory. The same run
with the 0.36M-parameter `tiny` model gives the baseline (Python, torch, transformers, data, tokenizer:
what is not the model), and measured = peak - baseline. The prediction is `observe-r1 plan`'s peak for the
same config on a "CPU" of that many processes (fp32 compute, no reserve, the prompts' real lengths) minus
its prediction for the baseline's tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from observe_r1.config import load_config
from observe_r1.recipes.plan import GIB, Hardware, estimate, image_tokens, load_model_config, shape_of
from observe_r1.toy.tiny import build_like, build_tiny_vlm

ROOT = Path(__file__).resolve().parent.parent
STEP = ["optim.max_steps=2", "checkpoint.every=1000000", "logging.dump_rollouts_every=0",
        "logging.tensorboard=false", "algorithm.kl_mode=loss"]  # fmt: skip


def overrides(args, model: Path, out: Path, strategy: str) -> list[str]:
    return [f"model.path={model}", f"logging.output_dir={out}", f"parallel.strategy={strategy}",
            f"rollout.prompts_per_step={args.prompts}", f"rollout.n={args.n}",
            f"rollout.max_new_tokens={args.tokens}", f"optim.mini_batch_size={args.prompts * args.n}",
            f"optim.micro_batch_size={args.micro}", *STEP]  # fmt: skip


def peak_rss(command: list[str], out: Path) -> list[int]:
    """Run `command` (2 steps); each training process's peak resident bytes during the steps: the
    high-water mark is reset when training starts (after loading and sharding: host memory on a GPU machine)
    and read when step 2 is logged, before the final checkpoint (gathered into host memory on a GPU
    machine); then the run is stopped."""
    log = out.with_suffix(".log")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # freed tensors go back to the OS at once
    with log.open("w") as err:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=err, stderr=err, env=env, start_new_session=True)
    started, peaks = False, {}
    try:
        while proc.poll() is None:
            workers = [p for p in psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
                       if _is_worker(p)]  # fmt: skip
            if not started and "GRPO: " in log.read_text():
                for p in workers:
                    Path(f"/proc/{p.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                started = True
            if started:
                for p in workers:
                    peaks[p.pid] = max(peaks.get(p.pid, 0), _hwm(p.pid))
            metrics = out / "metrics.jsonl"
            if started and metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.01)
        else:
            raise RuntimeError(log.read_text()[-3000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return list(peaks.values())


def _is_worker(p: psutil.Process) -> bool:
    try:
        line = " ".join(p.cmdline())
    except psutil.Error:
        return False
    return "observe_r1.cli" in line and "torch.distributed.run" not in line


def _hwm(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) * 1024


def command(args, model: Path, out: Path, strategy: str) -> list[str]:
    train = [
        "-m",
        "observe_r1.cli",
        "train",
        str(ROOT / "configs" / "tiny_cpu.yaml"),
        *overrides(args, model, out, strategy),
    ]
    if args.procs > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.procs), *train]
    return [sys.executable, *train]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "small", "medium"], default="small")
    p.add_argument("--like", help="a real config.json: random weights of that architecture at reduced depth")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--vision-layers", type=int, default=1)
    p.add_argument("--strategy", nargs="+", default=["ddp", "fsdp"])
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result: dict = {"settings": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.like:
            model = build_like(
                args.like, root / "model", layers=args.layers, vision_layers=args.vision_layers
            )
        else:
            model = build_tiny_vlm(root / "model", size=args.model)
        baseline_model = build_tiny_vlm(root / "baseline-model", size="tiny")
        config = load_model_config(model)
        for strategy in args.strategy:
            cfg = load_config(
                ROOT / "configs" / "tiny_cpu.yaml", overrides(args, model, root / "x", strategy)
            )
            shape = shape_of(config, cfg)
            hw = Hardware(gpus=args.procs, memory_gib=1e6, device="cpu")
            prompt = estimate_prompt(cfg, shape)
            plan = estimate(cfg, shape, hw, prompt_tokens=prompt, response_tokens=args.tokens)
            # the baseline run's own model is tiny but not nothing: compare like with like
            small = estimate(cfg, shape_of(load_model_config(baseline_model), cfg), hw, prompt_tokens=prompt,
                             response_tokens=args.tokens)  # fmt: skip
            predicted = plan.peak - small.peak
            base = peak_rss(
                command(args, baseline_model, root / f"base-{strategy}", strategy), root / f"base-{strategy}"
            )
            peak = peak_rss(
                command(args, model, root / f"run-{strategy}", strategy), root / f"run-{strategy}"
            )
            measured = max(peak) - max(base)
            result[strategy] = {
                "parameters": shape.total,
                "predicted_gib": round(predicted / GIB, 3),
                "predicted_tiny_baseline_gib": round(small.peak / GIB, 3),
                "measured_gib": round(measured / GIB, 3),
                "predicted_over_measured": round(predicted / measured, 3),
                "peak_rss_gib": [round(x / GIB, 3) for x in peak],
                "baseline_rss_gib": [round(x / GIB, 3) for x in base],
                "terms_gib": {k: round(v / GIB, 3) for k, v in plan.terms.items() if v},
                "phase": "training" if plan.phase(plan.training) >= plan.phase(plan.rollout) else "rollout",
            }
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


def estimate_prompt(cfg, shape) -> int:
    """The synthetic prompts' length: one image at the config's pixel limit and ~60 text tokens."""
    return min(cfg.data.max_prompt_length, image_tokens(cfg, shape)[1] + 60)


if __name__ == "__main__":
    main()
