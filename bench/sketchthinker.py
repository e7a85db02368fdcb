"""SketchThinker-R1 at CPU scale: does RL under a learned style reward shorten the thinking without costing accuracy?

1. A verbose policy: the shipped cold start fine-tuned on the long forms of the synthetic task's references
   (`toy/sketch.py`: every observation restated, re-checks, hedges), `--sft-steps` SFT steps.
2. SketchJudge: a reward model (`observe-r1 rm`'s recipe) trained from the verbose policy on (sketch, long)
   pairs of the training items; its held-out pairwise accuracy.
3. GRPO from the verbose policy for `--steps` steps, twice on the same items and seed: (a) accuracy + format,
   (b) the same + the reward model (`--scores`: standardized by default, weight `--rm-weight`; `--gate`: it
   pays only for a right answer). The length bonus is off in
   both, so a shorter thinking comes from the reward model alone.
Held-out greedy evaluation of the verbose policy and of both runs' last checkpoints: accuracy, the mean
number of tokens inside <think>, the mean response length.

    python bench/sketchthinker.py [--out runs/sketchthinker] [--seed 0] [--json]

Each finished part is read back when the command is run again (its folder's result.json).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

from observe_r1.config import load_config
from observe_r1.models.inputs import ChatEncoder
from observe_r1.recipes.ablate import bootstrap_interval
from observe_r1.recipes.demo import cold_start_path
from observe_r1.recipes.evaluate import evaluate_checkpoint
from observe_r1.recipes.grpo import train
from observe_r1.recipes.rm import rm
from observe_r1.recipes.sft import sft
from observe_r1.toy.sketch import write_pairs
from observe_r1.training.checkpoint import latest_checkpoint

THINK_RE = re.compile(r"<think>(.*?)</think>", re.S)
COMMON = [
    "data.system_prompt=none",
    "data.max_prompt_length=256",
    "rollout.n=8",
    "optim.schedule=constant",
    "optim.warmup_ratio=0",
    "optim.lr=1e-4",
    "checkpoint.every=1000",
    "logging.dump_rollouts_every=0",
    "logging.log_completions_every=0",
]


def measured(out: Path, make: Any) -> dict[str, Any]:
    """`make()`'s result, kept in OUT/result.json (read back on a second run)."""
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    started = time.perf_counter()
    result = make() | {"seconds": round(time.perf_counter() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=1))
    return result


def evaluation(model: Path, test: Path, tokens: int) -> dict[str, Any]:
    metrics, records = evaluate_checkpoint(model, [str(test)], "none", tokens, 50)
    tokenizer = ChatEncoder.from_pretrained(model).tokenizer
    thinks = [THINK_RE.search(r["response"]) for r in records]
    think_tokens = [len(tokenizer(t.group(1))["input_ids"]) if t else 0 for t in thinks]
    return {
        "accuracy": metrics["accuracy"],
        "format_rate": metrics["format_rate"],
        "think_tokens": statistics.mean(think_tokens),
        "response_tokens": metrics.get("length_mean"),
        "sample": records[0]["response"],
        "correct": [int(r["correct"]) for r in records],  # per held-out item, for the paired comparison
    }


def per_item(out: Path, test: Path, tokens: int) -> list[int]:
    """The run's per-item correctness (0/1) on the held-out items: from OUT/result.json, or (a result written
    before it was recorded) by evaluating its checkpoint again, greedy, and adding it there."""
    result = json.loads((out / "result.json").read_text())
    if "correct" not in result:
        last = latest_checkpoint(out)
        assert last is not None, f"{out} has no checkpoint"
        result["correct"] = evaluation(last, test, tokens)["correct"]
        (out / "result.json").write_text(json.dumps(result, indent=1))
    return result["correct"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/sketchthinker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=256)
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--sft-steps", type=int, default=60)
    p.add_argument("--rm-steps", type=int, default=40)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rm-weight", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1e-4, help="GRPO's learning rate")
    p.add_argument(
        "--gate",
        action="store_true",
        help="the run with the reward model: reward.gate=accuracy (style pays only when right)",
    )
    p.add_argument(
        "--scores",
        default="standardized",
        choices=("standardized", "sigmoid", "raw"),
        help="reward.reward_model.scores of the run with the reward model",
    )
    p.add_argument(
        "--tag", default="", help="a suffix for the GRPO runs' folders (another --lr or --rm-weight)"
    )
    p.add_argument("--prompts", type=int, default=8, help="GRPO prompts per step (x 8 responses)")
    p.add_argument(
        "--tokens", type=int, default=320, help="new tokens per response (rollouts and evaluation)"
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = Path(args.out) / f"seed{args.seed}"
    data = {split: out / "data" / f"{split}.jsonl" for split in ("train", "test")}
    if not data["test"].is_file():
        data = write_pairs(out / "data", args.train, args.test, seed=10_000 + args.seed, levels=(1, 2))
    train_data, test = str(data["train"]), data["test"]
    seed = [
        f"seed={args.seed}",
        f"data.train=[{train_data}]",
        f"rollout.max_new_tokens={args.tokens}",
        f"rollout.prompts_per_step={args.prompts}",
    ]

    def verbose() -> dict[str, Any]:
        cfg = load_config(
            None,
            [
                *COMMON,
                *seed,
                f"model.path={cold_start_path()}",
                "sft.response_column=long",
                f"optim.max_steps={args.sft_steps}",
                "optim.mini_batch_size=16",
                "optim.micro_batch_size=8",
                f"logging.output_dir={out / 'verbose'}",
            ],
        )
        sft(cfg, export=out / "verbose" / "model")
        return evaluation(out / "verbose" / "model", test, args.tokens)

    def judge() -> dict[str, Any]:
        cfg = load_config(
            None,
            [
                *COMMON,
                *seed,
                f"model.path={out / 'verbose' / 'model'}",
                f"data.test=[{test}]",
                f"optim.max_steps={args.rm_steps}",
                "optim.mini_batch_size=16",
                "optim.micro_batch_size=8",
                f"logging.output_dir={out / 'rm'}",
            ],
        )
        rm(cfg)
        rows = [json.loads(x) for x in (out / "rm" / "metrics.jsonl").read_text().splitlines()]
        return {"pair_accuracy": rows[-1]["eval/pair_accuracy"], "margin": rows[-1]["eval/margin"]}

    def grpo(name: str, terms: str, gated: bool = False) -> dict[str, Any]:
        cfg = load_config(
            None,
            [
                *COMMON,
                *seed,
                f"model.path={out / 'verbose' / 'model'}",
                f"optim.max_steps={args.steps}",
                f"optim.mini_batch_size={8 * args.prompts}",
                f"optim.lr={args.lr}",
                f"optim.micro_batch_size={min(16, 8 * args.prompts)}",
                "reward.bonus_coef=0",
                f"reward.terms={terms}",
                f"reward.reward_model.path={out / 'rm' / 'model'}",
                f"reward.reward_model.scores={args.scores}",
                f"logging.output_dir={out / name}",
                *(["reward.gate=accuracy"] if gated else []),
            ],
        )
        train(cfg)
        last = latest_checkpoint(out / name)
        assert last is not None
        return evaluation(last, test, args.tokens)

    rules = "[{name: accuracy, weight: 1.0}, {name: observe_format, weight: 0.5}"
    with_rm = rules + f", {{name: reward_model, weight: {args.rm_weight}}}]"
    kind = ("_gated" if args.gate else "") + ("" if args.scores == "standardized" else f"_{args.scores}")
    plain, scored = f"grpo{args.tag}", f"grpo_rm{args.rm_weight:g}{kind}{args.tag}"
    results = {
        "verbose": measured(out / "verbose", verbose),
        "sketchjudge": measured(out / "rm", judge),
        "grpo": measured(out / plain, lambda: grpo(plain, rules + "]")),
        "grpo_rm": measured(out / scored, lambda: grpo(scored, with_rm, args.gate)),
    }
    print(f"SketchJudge held-out pair accuracy {results['sketchjudge']['pair_accuracy']:.3f}")
    print("| policy | accuracy | format rate | thinking tokens | response tokens | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("verbose", "grpo", "grpo_rm"):
        r = results[name]
        print(
            f"| {name} | {r['accuracy']:.3f} | {r['format_rate']:.3f} | {r['think_tokens']:.1f} | "
            f"{r['response_tokens']:.1f} | {r['seconds']} |"
        )
    # is the accuracy drop beyond noise? the paired difference over the same held-out items
    pair = [per_item(out / name, test, args.tokens) for name in (scored, plain)]
    diffs = [a - b for a, b in zip(*pair, strict=True)]
    low, high = bootstrap_interval(diffs)
    results["accuracy_difference"] = {"mean": statistics.fmean(diffs), "interval": [low, high]}
    print(
        f"accuracy, with the reward model minus without: {statistics.fmean(diffs):+.3f} "
        f"(95% paired bootstrap interval over the {len(diffs)} items [{low:+.3f}, {high:+.3f}])"
    )
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
