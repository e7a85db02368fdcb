"""The memory planner against real training steps on this CPU: predicted vs measured peak memory per process.

    python bench/plan_memory.py [--model small | --like CONFIG_JSON --layers 1 --vision-layers 1]
                                [--strategy ddp fsdp] [--procs 2] [--json]

For each strategy, `observe-r1 train` runs 2 GRPO steps (`--procs` processes under torchrun; KL reference on;
no checkpoint written) and every training process's peak resident memory is read from the kernel
(`VmHWM` in /proc/PID/status, polled until it exits: the exact high-water mark, not a sample). The same run
with the 0.36M-parameter `tiny` model gives the baseline (Python, torch, transformers, data, tokenizer:
what is not the model), and measured = peak - baseline. The prediction is `observe-r1 plan`'s peak for the
same config on a "CPU" of that many processes: fp32 compute, no reserve, the prompts' real lengths.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from observe_r1.config import load_config
from observe_r1.recipes.plan import GIB, Hardware, estimate, load_model_config, shape_of
from observe_r1.toy.tiny import build_like, build_tiny_vlm

ROOT = Path(__file__).resolve().parent.parent
STEP = ["optim.max_steps=2", "checkpoint.every=1000000", "logging.dump_rollouts_every=0",
        "logging.tensorboard=false", "algorithm.kl_mode=loss"]  # fmt: skip


def overrides(args, model: Path, out: Path, strategy: str) -> list[str]:
    return [f"model.path={model}", f"logging.output_dir={out}", f"parallel.strategy={strategy}",
            f"rollout.prompts_per_step={args.prompts}", f"rollout.n={args.n}",
            f"rollout.max_new_tokens={args.tokens}", f"optim.mini_batch_size={args.prompts * args.n}",
            f"optim.micro_batch_size={args.micro}", *STEP]  # fmt: skip


def peak_rss(command: list[str]) -> list[int]:
    """Run `command`; the peak resident bytes of each process that trains (the CLI workers)."""
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
            try:
                line = " ".join(p.cmdline())
                if "observe_r1.cli" not in line or "torch.distributed.run" in line:  # a worker, not torchrun
                    continue
                status = Path(f"/proc/{p.pid}/status").read_text()
                hwm = (
                    int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
                    * 1024
                )
                peaks[p.pid] = max(peaks.get(p.pid, 0), hwm)
            except (psutil.Error, OSError, StopIteration):
                continue
        time.sleep(0.01)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.read()[-3000:] if proc.stderr else "failed")
    return list(peaks.values())


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
            prompt = estimate_prompt(cfg)
            plan = estimate(cfg, shape, hw, prompt_tokens=prompt, response_tokens=args.tokens)
            base = peak_rss(command(args, baseline_model, root / f"base-{strategy}", strategy))
            peak = peak_rss(command(args, model, root / f"run-{strategy}", strategy))
            measured = max(peak) - max(base)
            result[strategy] = {
                "parameters": shape.total,
                "predicted_gib": round(plan.peak / GIB, 3),
                "measured_gib": round(measured / GIB, 3),
                "predicted_over_measured": round(plan.peak / measured, 3),
                "peak_rss_gib": [round(x / GIB, 3) for x in peak],
                "baseline_rss_gib": [round(x / GIB, 3) for x in base],
                "terms_gib": {k: round(v / GIB, 3) for k, v in plan.terms.items() if v},
                "phase": "training" if plan.phase(plan.training) >= plan.phase(plan.rollout) else "rollout",
            }
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


def estimate_prompt(cfg) -> int:
    """The synthetic prompts' length: one image at the config's pixel limit and ~60 text tokens."""
    patches = cfg.data.max_pixels // 196
    return min(cfg.data.max_prompt_length, patches // 4 + 60)


if __name__ == "__main__":
    main()
