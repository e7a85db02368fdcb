"""Rollouts of an FSDP-sharded policy: gathered once per rollout (what the trainer does) vs generating with
the sharded model (every unit all-gathered at every decode step, the processes decoding in lockstep).

    torchrun --nproc_per_node 2 bench/fsdp_generate.py [--size small] [--prompts 4] [--n 4] [--tokens 48]

Run under torchrun (gloo on CPU, set OMP_NUM_THREADS=1). Each process generates its own prompts both ways,
in alternating rounds; rank 0 prints the median seconds of each and whether the responses are the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch.distributed as dist

from observe_r1.config import load_config
from observe_r1.data.dataset import load_samples
from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import load_model
from observe_r1.rollout.base import PromptBatch, SamplingParams
from observe_r1.rollout.hf import HFRollout
from observe_r1.toy.synth import write_dataset
from observe_r1.toy.tiny import build_tiny_vlm
from observe_r1.training import sharding


class Lockstep(HFRollout):
    """HF generate on the sharded model: transformers' `synced_gpus` keeps the processes decoding together."""

    def _generate(self, batch, index, seeds, sampling):
        original = self.model.generate

        def synced(*args, **kwargs):
            kwargs["synced_gpus"] = True
            return original(*args, **kwargs)

        self.model.generate = synced
        try:
            return super()._generate(batch, index, seeds, sampling)
        finally:
            self.model.generate = original


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "small", "medium"], default="small")
    p.add_argument("--prompts", type=int, default=4, help="per process")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    root = Path(tempfile.gettempdir()) / f"fsdp-generate-{args.size}"
    if rank == 0:
        build_tiny_vlm(root / "model", size=args.size)
        write_dataset(root / "data", train=8 * args.prompts, test=1, seed=0)
    dist.barrier()
    encoder = ChatEncoder.from_pretrained(root / "model", max_prompt_length=1024)
    model = sharding.shard(
        load_model(str(root / "model")), load_config(None, ["parallel.strategy=fsdp"]), None
    )
    samples = load_samples([str(root / "data" / "train.jsonl")])[
        rank * args.prompts : (rank + 1) * args.prompts
    ]
    prompts = [encoder.encode(s.messages, s.load_images(), s.id) for s in samples]
    batch = PromptBatch(prompts, list(range(rank * 100, rank * 100 + len(prompts))), seed=0)
    sampling = SamplingParams(n=args.n, max_new_tokens=args.tokens)
    times: dict[str, list[float]] = {"gathered": [], "sharded": []}
    texts = {}
    for _ in range(args.rounds):
        for way in times:
            dist.barrier()
            started = time.perf_counter()
            if way == "gathered":
                with sharding.gathered(model):
                    out = HFRollout(model, encoder).generate(batch, sampling)
            else:
                out = Lockstep(model, encoder).generate(batch, sampling)
                sharding.reshard(model)
            dist.barrier()
            times[way].append(time.perf_counter() - started)
            texts[way] = out.texts
    if rank == 0:
        result = {way: round(statistics.median(t), 3) for way, t in times.items()}
        result["sharded_over_gathered"] = round(result["sharded"] / result["gathered"], 2)
        result["same_responses"] = texts["gathered"] == texts["sharded"]
        result["settings"] = vars(args)
        print(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
