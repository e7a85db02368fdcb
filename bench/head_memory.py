"""What scoring the output head in chunks saves: the peak memory and the time of one training pass's
log-probs, forward and backward, over a real vocabulary (Qwen2.5-VL-3B's text widths and 151,936 tokens, one
decoder layer), with every position's logits at once against `models.policy.TokenScores`' chunks.

    python bench/head_memory.py [--positions 4096] [--layers 1] [--json]

Each variant runs in a fresh process: the model is built (random weights, fp32), the kernel's high-water
mark of its resident memory is reset (`/proc/self/clear_refs`), one `completion_logprobs` pass with an
entropy bonus runs forward and backward, and the new high-water mark (`VmHWM`) minus the resident memory
before the pass is the pass's peak. `--positions` response tokens of one sequence (a 16-token prompt).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

QWEN25_VL_3B_TEXT = dict(
    hidden_size=2048,
    intermediate_size=11008,
    num_attention_heads=16,
    num_key_value_heads=2,
    vocab_size=151936,
    tie_word_embeddings=True,
)


def kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
    return int(line.split()[1])


def one(positions: int, layers: int, chunked: bool, widths: dict) -> dict:
    """One pass in this process (the child side)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from observe_r1.models.policy import completion_logprobs, head_chunk_rows

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=layers, **widths))
    prompt, vocab = 16, widths["vocab_size"]
    ids = torch.randint(0, vocab, (1, prompt + positions))
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_ids": ids[:, prompt:],
        "completion_mask": torch.ones(1, positions, dtype=torch.long),
    }
    rows = head_chunk_rows(vocab) if chunked else positions
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident memory
    before = kib("VmRSS")
    started = time.perf_counter()
    logp, ent = completion_logprobs(model, inputs, entropy_grad=True, chunk_rows=rows)
    (logp.sum() + 0.01 * ent.sum()).backward()
    seconds = time.perf_counter() - started
    return {
        "chunked": chunked,
        "chunk_rows": rows,
        "positions": positions,
        "seconds": round(seconds, 2),
        "peak_gib": round((kib("VmHWM") - before) / 2**20, 3),
        "logp_sum": float(logp.sum()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--positions", type=int, default=4096)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--hidden", type=int, default=0, help="another width (the smoke test's); 0 = the 3B's")
    p.add_argument("--vocab", type=int, default=0, help="another vocabulary size; 0 = the 3B's")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", choices=["whole", "chunked"], help=argparse.SUPPRESS)
    args = p.parse_args()
    widths = dict(QWEN25_VL_3B_TEXT)
    if args.hidden:
        widths.update(
            hidden_size=args.hidden,
            intermediate_size=4 * args.hidden,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    widths["vocab_size"] = args.vocab or widths["vocab_size"]
    if args.child:
        print(json.dumps(one(args.positions, args.layers, args.child == "chunked", widths)))
        return
    rows = []
    for variant in ("whole", "chunked"):
        cmd = [sys.executable, __file__, "--child", variant, *sys.argv[1:]]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.splitlines()[-1]))
    whole, chunked = rows
    same = abs(whole["logp_sum"] - chunked["logp_sum"]) <= 1e-4 * abs(whole["logp_sum"])
    result = {
        "positions": args.positions,
        "vocab": widths["vocab_size"],
        "whole": whole,
        "chunked": chunked,
        "same_logp": same,
    }
    if args.json:
        print(json.dumps(result))
        return
    for r in rows:
        label = "chunked" if r["chunked"] else "whole"
        print(
            f"{label:8} {r['chunk_rows']:>6} positions at once: peak {r['peak_gib']:.2f} GiB, {r['seconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
