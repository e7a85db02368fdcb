"""What packing the training passes' micro-batches saves over padding them (`model.packing`).

    python bench/packing.py [--size medium] [--responses 64] [--median-length 150] [--tokens 384]
                            [--micro 8 16 64] [--rounds 2] [--json]

A `--size` tiny text model (random init), `--responses` completions with lengths drawn from a lognormal
(median `--median-length`, at most `--tokens`: the regime of `bench/vs_trl.py --regime varlen`), then
forward + backward over the update's micro-batches (longest first inside the mini-batch, as
`grpo.Actor.update` plans them), padded and packed, in alternating rounds. Prints the median seconds of each
and checks that the log-probs agree.
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
from observe_r1.models.policy import completion_logprobs, load_model
from observe_r1.rollout.base import Rollout
from observe_r1.rollout.batch import micro_batches, sequence_inputs
from observe_r1.toy.tiny import build_tiny_lm


def synthetic_rollout(encoder: ChatEncoder, responses: int, median: float, most: int, seed: int) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(responses, generator=g) * 0.6) * median
    lengths = lengths.long().clamp(1, most)
    width = int(lengths.max())
    ids = torch.randint(5, len(encoder.tokenizer) - 30, (responses, width), generator=g)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    prompts = [
        encoder.encode(
            [{"role": "user", "content": f"Count the digits of {i * 7919} and add them."}], [], "s"
        )
        for i in range(responses // 8)
    ]
    return Rollout(
        prompts=prompts,
        prompt_index=[i // 8 for i in range(responses)],
        group_ids=[i // 8 for i in range(responses)],
        completion_ids=ids * mask,
        completion_mask=mask,
        lengths=lengths,
        truncated=torch.zeros(responses, dtype=torch.bool),
        texts=[""] * responses,
    )


def one_pass(model, encoder, rollout, micro: int, packed: bool) -> tuple[float, torch.Tensor]:
    out = torch.zeros(rollout.completion_ids.shape)
    started = time.perf_counter()
    for idx in [i for m in micro_batches(rollout, len(rollout), micro) for i in m]:
        logp, _ = completion_logprobs(model, sequence_inputs(rollout, idx, encoder), packed=packed)
        logp.sum().backward()
        out[idx, : logp.shape[1]] = logp.detach()
    return time.perf_counter() - started, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "small", "medium"], default="medium")
    p.add_argument("--responses", type=int, default=64)
    p.add_argument("--median-length", type=float, default=150.0)
    p.add_argument("--tokens", type=int, default=384)
    p.add_argument("--micro", type=int, nargs="+", default=[8, 16, 64])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_lm(Path(tmp) / "model", args.size, args.seed)
        encoder = ChatEncoder.from_pretrained(path, max_prompt_length=1024)
        model = load_model(str(path))
    rollout = synthetic_rollout(encoder, args.responses, args.median_length, args.tokens, args.seed)
    mask = rollout.completion_mask.bool()
    result: dict = {"tokens": int(mask.sum()), "settings": vars(args)}
    for micro in args.micro:
        times: dict[bool, list[float]] = {False: [], True: []}
        logps = {}
        for _ in range(args.rounds):
            for packed in (False, True):
                seconds, logps[packed] = one_pass(model, encoder, rollout, micro, packed)
                times[packed].append(seconds)
        padded, packed = statistics.median(times[False]), statistics.median(times[True])
        result[f"micro{micro}"] = {
            "padded_s": round(padded, 2),
            "packed_s": round(packed, 2),
            "packed_over_padded": round(packed / padded, 3),
            "logprob_max_diff": float((logps[True] - logps[False])[mask].abs().max()),
        }
    if args.json:
        print(json.dumps(result))
    else:
        for key, row in result.items():
            print(key, row)


if __name__ == "__main__":
    main()
