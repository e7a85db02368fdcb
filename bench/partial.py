"""What partial rollouts cost (rollout.in_flight: partial | restart, issue 27): the same rollout generated whole
and in segments of `rollout.segment_tokens` tokens (each segment re-encodes its prefix), with weights that do
not change, so that the tokens are the same and only the time differs.

    python bench/partial.py [--size small] [--prompts 8] [--n 8] [--tokens 128] [--segments 64 32 16 8] [--json]

A random tiny Qwen2 text model (`observe_r1.toy.tiny.build_tiny_lm`, it rarely stops early, so every row
runs to `--tokens`), HF generate with the behaviour log-probs recorded (as in the engine), one thread count
(torch's default). Prints seconds per rollout (the median of `--repeats`), the slowdown against the whole
rollout, and whether the tokens are the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import load_model
from observe_r1.rollout.base import PromptBatch, SamplingParams
from observe_r1.rollout.hf import HFRollout
from observe_r1.rollout.partial import PartialRollout
from observe_r1.toy.tiny import build_tiny_lm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--segments", type=int, nargs="+", default=[64, 32, 16, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp()) / "lm"
    build_tiny_lm(folder, args.size, 0)
    encoder = ChatEncoder.from_pretrained(folder)
    backend = HFRollout(load_model(str(folder)).eval(), encoder)
    backend.record_logprobs = True
    prompts = [
        encoder.encode([{"role": "user", "content": f"What is {a} + {a + 7}? Show the steps."}], [], f"p{a}")
        for a in range(args.prompts)
    ]
    batch = PromptBatch(prompts, list(range(args.prompts)), seed=0)
    sampling = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.tokens)

    def timed(make) -> tuple[float, torch.Tensor]:
        times, ids = [], None
        for _ in range(args.repeats):
            started = time.perf_counter()
            ids = make().completion_ids
            times.append(time.perf_counter() - started)
        return statistics.median(times), ids

    whole_s, whole = timed(lambda: backend.generate(batch, sampling))
    rows = [{"segment": 0, "seconds": whole_s, "slowdown": 1.0, "same_tokens": True}]
    for segment in args.segments:
        partial = PartialRollout(backend, encoder, segment, lambda: 0)
        seconds, ids = timed(lambda partial=partial: partial.generate(batch, sampling))
        same = ids.shape == whole.shape and bool(torch.equal(ids, whole))
        rows.append(
            {"segment": segment, "seconds": seconds, "slowdown": seconds / whole_s, "same_tokens": same}
        )
    print(f"{args.prompts} prompts x {args.n} responses x {args.tokens} tokens, tiny `{args.size}` model")
    print("| segment tokens | seconds per rollout | slowdown | same tokens |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        name = "whole (finish)" if not r["segment"] else str(r["segment"])
        print(f"| {name} | {r['seconds']:.2f} | {r['slowdown']:.2f}x | {r['same_tokens']} |")
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
