"""GRPO throughput of a randomly initialised model with the real Qwen2.5-VL-3B configuration (no weights
needed), measured through the real training loop (`observe_r1.recipes.grpo.train`).

    python bench/gpu_throughput.py --out runs/gpu_bench [--prompts 32] [--n 8] [--tokens 512] [--steps 3]
    python bench/gpu_throughput.py --size tiny --prompts 2 --n 2 --tokens 8 --steps 2   # CPU smoke run

Writes the model (bf16 safetensors) and synthetic 448x448 image prompts into OUT, runs `--steps` GRPO steps of
the Observe-R1 config (bf16 autocast, fp32 master weights, gradient checkpointing, KL in the reward, one
optimiser step per rollout step) and reports, from the steps after the first (warm-up):
  rollout tokens/s     generated tokens / rollout-stage seconds
  training MFU         model FLOPs of the training forward+backward (6 x parameters x tokens, attention
                       included, the vision tower once per prompt: the work needed, however often the
                       loop runs it; see `model_flops`) / update-stage
                       seconds / the GPU's peak dense bf16 FLOP/s (`--peak-tflops`, default by device name)
  end-to-end tokens/s  generated tokens / whole-step seconds
  peak memory          torch.cuda.max_memory_allocated
`--json` prints one JSON object. Random weights rarely emit the end token, so every response runs to
`--tokens` (the worst case for memory).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

# Qwen/Qwen2.5-VL-3B-Instruct's config.json (architecture numbers only; token ids come from our tokenizer)
QWEN25_VL_3B = {
    "text": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                 num_key_value_heads=2, vocab_size=151936, rms_norm_eps=1e-6, max_position_embeddings=128000),
    "rope": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
    "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                   fullatt_block_indexes=[7, 15, 23, 31], window_size=112, patch_size=14, spatial_merge_size=2,
                   temporal_patch_size=2, in_channels=3),
}  # fmt: skip
PEAK_BF16_TFLOPS = {"H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0,
                    "H200": 989.4, "A100": 312.0}  # fmt: skip


def write_model(out: Path, size: str) -> Path:
    """The tiny builder's tokenizer and image processor; for size "3b" the real 3B architecture."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from observe_r1.toy.tiny import MIN_PIXELS, build_tiny_vlm

    if size != "3b":
        return build_tiny_vlm(out, size=size)
    build_tiny_vlm(out, size="tiny")  # tokenizer, chat template, image processor
    config = qwen25_vl_3b_config()
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.save_pretrained(out)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=448 * 448).save_pretrained(out)
    return out


def qwen25_vl_3b_config():
    """The 3B architecture with the special-token ids of the tiny builder's tokenizer."""
    from transformers import Qwen2_5_VLConfig

    from observe_r1.toy.tiny import tiny_config, train_tokenizer

    small = tiny_config(train_tokenizer(512), "tiny")
    ids = {k: getattr(small.text_config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    text = QWEN25_VL_3B["text"] | ids | {"rope_parameters": QWEN25_VL_3B["rope"], "tie_word_embeddings": True}
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=QWEN25_VL_3B["vision"], image_token_id=small.image_token_id,
        video_token_id=small.video_token_id, vision_start_token_id=small.vision_start_token_id,
        vision_end_token_id=small.vision_end_token_id, tie_word_embeddings=True,
    )  # fmt: skip


def model_flops(
    model, sequences: int, prompt_tokens: int, completion_tokens: int, images: int, patches: int
) -> float:
    """Forward + backward FLOPs: per sequence 6 x language-model parameters per token plus causal attention
    (6 x layers x hidden x length per token); per image 6 x vision parameters per patch. `images` counts
    distinct images (prompts): the training passes share one image's features among its n responses."""
    text = model.config.get_text_config()
    visual = model.model.visual if hasattr(model, "model") else model.visual
    n_vision = sum(p.numel() for p in visual.parameters())
    n_lm = sum(p.numel() for p in model.parameters()) - n_vision
    length = prompt_tokens + completion_tokens
    attention = 6 * text.num_hidden_layers * text.hidden_size * length * length
    return sequences * (6 * n_lm * length + attention) + images * 6 * n_vision * patches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gpu_bench")
    p.add_argument("--size", choices=["3b", "tiny", "small"], default="3b")
    p.add_argument("--prompts", type=int, default=32, help="prompts per rollout step")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--tokens", type=int, default=512, help="response length (max_new_tokens)")
    p.add_argument("--image", type=int, default=448, help="image side in pixels")
    p.add_argument("--micro", type=int, default=8, help="micro-batch size of the training passes")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=0.0, help="GPU peak dense bf16 TFLOP/s (0 = by name)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from observe_r1.config import load_config
    from observe_r1.models.policy import load_model
    from observe_r1.recipes.grpo import train
    from observe_r1.toy.synth import write_dataset

    out = Path(args.out)
    model_dir = write_model(out / "model", args.size)
    data = write_dataset(
        out / "data", args.prompts * args.steps, 0, image_size=args.image, levels=(1, 2, 3, 4)
    )
    batch = args.prompts * args.n
    cfg = load_config(
        Path(__file__).resolve().parent.parent / "configs" / "observe_r1_qwen2_5_vl_3b.yaml",
        [f"model.path={model_dir}", f"data.train=[{data['train']}]", "data.test=[]", "data.max_pixels=250000", "rollout.backend=hf",
         "model.dtype=auto", f"rollout.n={args.n}", f"rollout.prompts_per_step={args.prompts}",
         f"rollout.max_new_tokens={args.tokens}", f"optim.mini_batch_size={batch}",
         f"optim.micro_batch_size={args.micro}", f"optim.max_steps={args.steps}", "optim.warmup_ratio=0",
         f"logging.output_dir={out / 'run'}", "logging.tensorboard=false", "logging.dump_rollouts_every=0",
         f"checkpoint.every={10**6}", "checkpoint.resume=none"],
    )  # fmt: skip
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train(cfg)
    rows = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/step_s" in r][1:] or [r for r in rows if "perf/step_s" in r]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in steps)

    generated = med("perf/generated_tokens")
    model = load_model(str(model_dir), dtype=torch.bfloat16)
    grid = args.image // 14
    prompt_tokens = (grid // 2) ** 2 + 40  # image tokens + chat template and question, about
    flops = model_flops(model, batch, prompt_tokens, int(generated / batch), args.prompts, grid * grid)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 989.4)
    result = {
        "device": name,
        "model": args.size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "settings": vars(args),
        "rollout_tokens_per_s": round(generated / med("time/rollout"), 1),
        "end_to_end_tokens_per_s": round(generated / med("perf/step_s"), 1),
        "training_mfu": round(flops / med("time/update") / (peak * 1e12), 4),
        "peak_tflops_assumed": peak,
        "step_s": round(med("perf/step_s"), 2),
        "stage_s": {k: round(med(k), 2) for k in steps[0] if k.startswith("time/")},
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
