"""What sharing one image's vision features among its n responses saves in the training passes.

    python bench/shared_vision.py [--size small] [--prompts 8] [--n 8] [--tokens 96] [--micro 16] [--image 112]

One rollout of the `--size` tiny model (random init) on synthetic prompts, then forward + backward over the
update's micro-batches (longest first inside the mini-batch, as `grpo.Actor.update` plans them) two ways, in
alternating rounds: as the training loop now runs them (`sequence_inputs`: the vision encoder once per
distinct image of a micro-batch) and with every sequence bringing its own copy of its pixels (before).
Prints the median seconds of each, the ratio, the patches through the vision tower, and checks that the
log-probs agree. `--json` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from observe_r1.data.dataset import load_samples
from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import completion_logprobs, load_model
from observe_r1.rollout.base import PromptBatch, SamplingParams
from observe_r1.rollout.batch import chunks, sequence_inputs
from observe_r1.rollout.hf import HFRollout
from observe_r1.toy.synth import write_dataset
from observe_r1.toy.tiny import build_tiny_vlm
from observe_r1.training.scoring import encode_prompts


def own_copies(inputs: dict, rollout, index: list[int], encoder: ChatEncoder) -> dict:
    out = {k: v for k, v in inputs.items() if k not in ("image_source", "image_grid_thw_distinct")}
    prompts = [rollout.prompts[rollout.prompt_index[i]] for i in index]
    out["pixel_values"] = encoder.collate(prompts)["pixel_values"]
    return out


def passes(model, batches: list[dict]) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    start, logps = time.perf_counter(), []
    for inputs in batches:
        logp, _ = completion_logprobs(model, inputs)
        (logp * inputs["completion_mask"]).sum().backward()
        logps.append(logp.detach())
    return time.perf_counter() - start, logps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "small"], default="small")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--tokens", type=int, default=96, help="response length (max_new_tokens)")
    p.add_argument("--micro", type=int, default=16)
    p.add_argument("--image", type=int, default=112, help="image side in pixels")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_vlm(Path(tmp) / "model", size=args.size)
        data = write_dataset(Path(tmp) / "data", args.prompts, 1, image_size=args.image, levels=(1, 2, 3, 4))
        encoder = ChatEncoder.from_pretrained(model_dir, max_pixels=args.image * args.image)
        model = load_model(str(model_dir))
        samples = load_samples(data["train"])[: args.prompts]
        prompts, _, _, _ = encode_prompts(samples, [s.messages for s in samples], encoder)
        batch = PromptBatch(prompts=prompts, group_ids=list(range(len(prompts))))
        rollout = HFRollout(model, encoder).generate(
            batch, SamplingParams(n=args.n, max_new_tokens=args.tokens)
        )
    order = sorted(
        range(len(rollout)), key=lambda i: -int(rollout.lengths[i])
    )  # one mini-batch, longest first
    micro = chunks(order, args.micro)
    shared = [sequence_inputs(rollout, idx, encoder) for idx in micro]
    copies = [own_copies(x, rollout, idx, encoder) for x, idx in zip(shared, micro, strict=True)]
    model.train()
    times: dict[str, list[float]] = {"shared": [], "copies": []}
    logps = {}
    for _ in range(args.rounds):
        for name, batches in (("shared", shared), ("copies", copies)):
            seconds, logps[name] = passes(model, batches)
            times[name].append(seconds)
    diff = max(float((a - b).abs().max()) for a, b in zip(logps["shared"], logps["copies"], strict=True))
    shared_s, copies_s = statistics.median(times["shared"]), statistics.median(times["copies"])
    result = {
        "size": args.size,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "shared_s": round(shared_s, 4),
        "copies_s": round(copies_s, 4),
        "ratio": round(copies_s / shared_s, 3),
        "vision_patches_shared": sum(int(x["pixel_values"].shape[0]) for x in shared),
        "vision_patches_copies": sum(int(x["pixel_values"].shape[0]) for x in copies),
        "max_logp_diff": diff,
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
