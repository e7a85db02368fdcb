"""One-shot GPU check: what the CPU machines cannot show, in at most 8 minutes on one H100/H200-class GPU,
written as one JSON (`bench/gpu_check.sh` runs it). Without a CUDA device it exits at once saying so.

    python bench/gpu_check.py --out runs/gpu_check            # all parts, OUT/gpu_check.json
    python bench/gpu_check.py --out runs/gpu_check --cpu      # the same parts on CPU, tiny sizes (a smoke run)

Parts, each in its own process under its own time limit, each recorded (its numbers or its error) whatever
happened to the ones before:
  env        device, torch / CUDA / transformers / vLLM / flash-attn versions
  hf         GRPO steps of the tiny VLM on the HF backend, bf16 autocast, packed micro-batches (flash-attention
             varlen when flash_attn is installed, else sdpa): step and stage times, tokens/s, peak memory
  vllm       the same on a text model with the vLLM backend, sleep mode on: weight sync every step,
             rollout/logprob_diff (engine vs trainer log-probabilities)
  fsdp       GRPO steps with parallel.strategy=fsdp on one GPU (torchrun, one process)
  real3b     the real Qwen2.5-VL-3B configuration cut to 2 decoder layers and 2 vision blocks: the planner's
             predicted peak (`observe-r1 plan`) vs torch.cuda.max_memory_allocated of the same config,
             rollout tokens/s and training MFU (bench/gpu_throughput.py's FLOP count)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 8 * 60
LIMITS_S = {"env": 30, "hf": 90, "vllm": 180, "fsdp": 90, "real3b": 150}


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def cuda_available() -> tuple[bool, str]:
    try:
        import torch
    except ImportError as e:
        return False, f"torch cannot be imported: {e}"
    if not torch.cuda.is_available():
        return False, f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda})"
    return True, torch.cuda.get_device_name()


# ------------------------------------------------------------------ the parts (each runs in its own process)


def part_env(work: Path, cpu: bool) -> dict:
    import torch
    import transformers

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        out |= {"device": torch.cuda.get_device_name(), "memory_gib": round(total / 2**30, 1)}
        out["bf16"] = torch.cuda.is_bf16_supported()
    for name in ("vllm", "flash_attn"):
        if has(name):
            out[name] = __import__(name).__version__
    return out


def grpo_overrides(work: Path, cpu: bool, steps: int = 3) -> list[str]:
    return [
        f"optim.max_steps={steps}",
        f"logging.output_dir={work}",
        "logging.tensorboard=false",
        "checkpoint.every=1000",
        "checkpoint.resume=none",
        "logging.dump_rollouts_every=0",
        f"model.dtype={'float32' if cpu else 'bfloat16'}",
    ]


def run_grpo(cfg_path: Path, overrides: list[str]) -> dict:
    """`observe-r1 train` in this process; the per-step numbers of the steps after the first (warm-up)."""
    import torch

    from observe_r1.config import load_config
    from observe_r1.recipes.grpo import train

    cfg = load_config(cfg_path, overrides)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    train(cfg)
    rows = [json.loads(x) for x in (Path(cfg.logging.output_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/step_s" in r]
    warm = steps[1:] or steps

    def med(key: str) -> float | None:
        values = [r[key] for r in warm if key in r]
        return round(statistics.median(values), 4) if values else None

    out = {
        "steps": len(steps),
        "wall_s": round(time.perf_counter() - started, 1),
        "step_s": med("perf/step_s"),
        "tokens_per_s": med("perf/tokens_per_s"),
        "stage_s": {k: med(k) for k in warm[0] if k.startswith("time/")},
        "reward_mean": med("reward/total/mean"),
        "finite_loss": all(r.get("actor/pg_loss", 0.0) == r.get("actor/pg_loss", 0.0) for r in steps),
    }
    for key in ("rollout/logprob_diff", "rollout/logprob_diff_max", "actor/grad_norm"):
        if any(key in r for r in warm):
            out[key] = med(key)
    if torch.cuda.is_available():
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def tiny_text_model(work: Path) -> tuple[Path, Path]:
    """A tiny random Qwen2 causal LM (vLLM's text path) and arithmetic word problems for it."""
    from observe_r1.toy.arith import write_dataset
    from observe_r1.toy.tiny import build_tiny_lm

    return build_tiny_lm(work / "model"), write_dataset(work / "data", 64, 0)["train"]


def part_hf(work: Path, cpu: bool) -> dict:
    attn = "flash_attention_2" if has("flash_attn") and not cpu else "sdpa"
    out = run_grpo(
        ROOT / "configs" / "tiny_cpu.yaml",
        [
            *grpo_overrides(work, cpu),
            "rollout.backend=hf",
            "model.packing=true",
            f"model.attn_implementation={attn}",
        ],
    )
    return {"attention": attn, **out}


def part_vllm(work: Path, cpu: bool) -> dict:
    if not has("vllm"):
        raise RuntimeError("vLLM is not installed (pip install vllm; docs/rollout.md)")
    model, data = tiny_text_model(work)
    engine = ["rollout.vllm.enable_sleep_mode=true"] if not cpu else ["rollout.vllm.kv_cache_gb=0.5"]
    return run_grpo(
        ROOT / "configs" / "tiny_cpu.yaml",
        [
            *grpo_overrides(work / "run", cpu),
            f"model.path={model}",
            f"data.train=[{data}]",
            "data.test=[]",
            "data.system_prompt=think",
            "rollout.backend=vllm",
            *engine,
        ],
    )


def part_fsdp(work: Path, cpu: bool) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "1",
        "-m",
        "observe_r1.cli",
        "train",
        str(ROOT / "configs" / "tiny_cpu.yaml"),
        *grpo_overrides(work, cpu),
        "parallel.strategy=fsdp",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr[-2000:]}")
    rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/step_s" in r]
    return {
        "steps": len(steps),
        "step_s": [round(r["perf/step_s"], 3) for r in steps],
        "reward_mean": [r.get("reward/total/mean") for r in steps],
    }


def part_real3b(work: Path, cpu: bool) -> dict:
    """The planner against the allocator on the real 3B widths at 2 layers, and the throughput numbers."""
    import torch
    from transformers import AutoConfig

    from observe_r1.config import load_config
    from observe_r1.models.policy import load_model
    from observe_r1.recipes.plan import Hardware, estimate, shape_of
    from observe_r1.toy.synth import write_dataset
    from observe_r1.toy.tiny import build_like

    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_throughput import PEAK_BF16_TFLOPS, model_flops

    source = ROOT / "src" / "observe_r1" / "assets" / "models" / "qwen2_5_vl_3b.json"
    model_dir = build_like(source, work / "model", 2, 2)
    prompts, n, tokens = (2, 2, 8) if cpu else (16, 8, 256)
    data = write_dataset(work / "data", prompts * 3, 0, image_size=112 if cpu else 448, levels=(1, 2, 3, 4))
    overrides = [
        *grpo_overrides(work / "run", cpu),
        f"model.path={model_dir}",
        f"data.train=[{data['train']}]",
        "data.test=[]",
        "rollout.backend=hf",
        f"rollout.n={n}",
        f"rollout.prompts_per_step={prompts}",
        f"rollout.max_new_tokens={tokens}",
        f"optim.mini_batch_size={prompts * n}",
        f"optim.micro_batch_size={min(8, prompts * n)}",
        "data.max_pixels=250000",
    ]
    cfg_path = ROOT / "configs" / "observe_r1_qwen2_5_vl_3b.yaml"
    out = run_grpo(cfg_path, overrides)
    cfg = load_config(cfg_path, overrides)
    memory = torch.cuda.mem_get_info()[1] / 2**30 if torch.cuda.is_available() else 80.0
    plan = estimate(
        cfg,
        shape_of(AutoConfig.from_pretrained(model_dir), cfg),
        Hardware(gpus=1, memory_gib=memory, device="cpu" if cpu else "cuda"),
    )
    out["planned_peak_gib"] = round(plan.peak / 2**30, 2)
    if out.get("peak_memory_gib"):
        out["planned_over_measured"] = round(out["planned_peak_gib"] / out["peak_memory_gib"], 3)
    model = load_model(str(model_dir))
    batch, generated = prompts * n, (out["tokens_per_s"] or 0) * (out["step_s"] or 0)
    grid = (112 if cpu else 448) // 14
    flops = model_flops(model, batch, (grid // 2) ** 2 + 40, int(generated / batch), prompts, grid * grid)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 989.4)
    update = out["stage_s"].get("time/update") or 0
    out["training_mfu"] = round(flops / update / (peak * 1e12), 4) if update and not cpu else None
    out["rollout_tokens_per_s"] = round(generated / out["stage_s"]["time/rollout"], 1) if generated else None
    return out


PARTS = {"env": part_env, "hf": part_hf, "vllm": part_vllm, "fsdp": part_fsdp, "real3b": part_real3b}


# ------------------------------------------------------------------ the driver


def run_part(name: str, work: Path, cpu: bool, limit: float) -> dict:
    """Run one part in a child process (a crash or hang there is recorded, never the end of the check)."""
    started = time.perf_counter()
    cmd = [sys.executable, __file__, "--part", name, "--out", str(work)] + (["--cpu"] if cpu else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {limit:.0f} s", "seconds": round(limit, 1)}
    seconds = round(time.perf_counter() - started, 1)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-1500:]
        return {"ok": False, "error": f"exit {proc.returncode}: {tail}", "seconds": seconds}
    return {"ok": True, "seconds": seconds, **json.loads(lines[-1])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gpu_check")
    p.add_argument("--cpu", action="store_true", help="run the parts on CPU at tiny sizes (a smoke run)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    args = p.parse_args()
    out = Path(args.out)
    if args.part:
        try:
            print(json.dumps(PARTS[args.part](out, args.cpu)))
            return 0
        except Exception:
            traceback.print_exc()
            return 1
    ok, device = (True, "cpu (smoke run)") if args.cpu else cuda_available()
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"gpu": ok and not args.cpu, "device": device, "parts": {}}
    if not ok:
        report["skipped"] = f"no GPU here: {device}; nothing was run"
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
        print(report["skipped"])
        return 0
    deadline = time.monotonic() + BUDGET_S
    for name in args.parts.split(","):
        left = deadline - time.monotonic()
        if left < 5:
            report["parts"][name] = {"ok": False, "error": "not run: the 8-minute budget was spent"}
            continue
        print(f"{name} ...", flush=True)
        report["parts"][name] = run_part(
            name, out / name, args.cpu, min(LIMITS_S[name] * (3 if args.cpu else 1), left)
        )
        print(
            f"{name}: {'ok' if report['parts'][name]['ok'] else 'FAILED'} ({report['parts'][name]['seconds']} s)"
        )
        (out / "gpu_check.json").write_text(
            json.dumps(report, indent=2) + "\n"
        )  # what is done survives a kill
    print(json.dumps(report, indent=2))
    return 0 if all(p["ok"] for p in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
