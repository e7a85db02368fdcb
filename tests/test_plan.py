"""`observe-r1 plan`: exact parameter counts from the meta-device model, the memory terms against a hand
calculation, and the verdicts for the paper's two configs."""

import subprocess
import sys

import torch
from transformers import AutoModelForImageTextToText

from observe_r1.config import load_config
from observe_r1.models.policy import prepare_policy
from observe_r1.recipes.plan import GIB, Hardware, estimate, load_model_config, shape_of
from observe_r1.toy.tiny import count_parameters
from tests.test_train import ROOT, TINY

QWEN_3B = "qwen2.5-vl-3b-instruct/config.json"
CONFIG_3B = ROOT / "configs" / "observe_r1_qwen2_5_vl_3b.yaml"
CONFIG_7B = ROOT / "configs" / "observe_r1_qwen2_5_vl_7b.yaml"
MODELS = ROOT / "src" / "observe_r1" / "assets" / "models"  # the published config.json files shipped
MODEL_7B = MODELS / "qwen2_5_vl_7b.json"


def test_parameter_counts_are_the_models(realcases, tiny_model_dir):
    cfg = load_config(TINY)
    for config in (load_model_config(realcases / QWEN_3B), load_model_config(MODEL_7B)):
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        shape = shape_of(config, cfg)
        assert shape.total == sum(p.numel() for p in model.parameters())
        assert shape.vision == sum(p.numel() for p in model.model.visual.parameters())
        assert shape.largest_unit == max(sum(p.numel() for p in layer.parameters()) for layer in model.model.language_model.layers)  # fmt: skip
    assert (
        round(shape_of(load_model_config(realcases / QWEN_3B), cfg).total / 1e9, 2) == 3.75
    )  # published: 3.75B
    assert round(shape.total / 1e9, 2) == 8.29  # 7B: published 8.29B
    # the tiny model: the real one's count; LoRA and a frozen tower: what peft and requires_grad say
    real = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    config = load_model_config(tiny_model_dir)
    assert shape_of(config, cfg).total == count_parameters(real)
    lora = load_config(TINY, ["model.lora_rank=4", "model.freeze_vision=true"])
    peft = prepare_policy(real, lora.model)
    assert shape_of(config, lora).trainable == sum(p.numel() for p in peft.parameters() if p.requires_grad)


def test_memory_terms_equal_a_hand_calculation(tiny_model_dir):
    """DDP, full fine-tuning with the KL reference, no checkpointing, on 1 GPU: every term by hand."""
    cfg = load_config(
        TINY, ["optim.micro_batch_size=2", "rollout.max_new_tokens=24", "data.max_prompt_length=256"]
    )
    config = load_model_config(tiny_model_dir)
    shape = shape_of(config, cfg)
    plan = estimate(cfg, shape, Hardware(gpus=1, memory_gib=1.0))
    p = shape.total
    assert plan.terms["weights + grads + AdamW"] == 16 * p  # 4 weights + 4 grads + 8 AdamW moments
    assert plan.terms["KL reference"] == 2 * p
    patches = 50176 // 14**2  # data.max_pixels of tiny_cpu.yaml
    prompt = min(256, patches // 4 + 128)
    tokens = 2 * (prompt + 24)
    h, i, layers = shape.hidden, shape.intermediate, shape.layers
    per_layer = 6 * h + 2 * shape.kv + 4 * i
    images = min(2, 8 // 4)  # micro-batch 2; mini-batch 8 = 2 prompts x 4 responses: 2 distinct images
    vision = (
        images * patches * shape.vision_layers * (6 * shape.vision_hidden + 4 * shape.vision_intermediate)
    )
    assert plan.terms["activations (one micro-batch)"] == 2 * (tokens * layers * per_layer + vision)
    assert plan.terms["logits (fp32)"] == 12 * 2 * 24 * shape.vocab
    rows = 4 * 4  # prompts_per_step x n on one GPU
    assert plan.terms["generate: KV cache"] == 2 * rows * (prompt + 24) * layers * 2 * shape.kv
    acts = plan.terms["activations (one micro-batch)"] + plan.terms["logits (fp32)"]
    assert plan.terms["optimizer step temporaries"] == max(0, 4 * p - acts)  # after the backward freed them
    assert plan.terms["DDP gradient buckets"] == 0  # 1 GPU
    training = 16 * p + 2 * p + max(4 * p, acts)
    rollout = 16 * p + 2 * p + plan.terms["generate: KV cache"]
    assert plan.peak == max(training, rollout)
    assert plan.usable == (1.0 - 2.0) * GIB and not plan.fits  # 2 GiB reserved: a 1 GiB GPU never fits
    # FSDP over 8: the states and the reference split, plus the gathered units
    fsdp = estimate(load_config(TINY, ["parallel.strategy=fsdp"]), shape, Hardware(gpus=8))
    assert fsdp.terms["weights + grads + AdamW"] == 16 * p / 8 and fsdp.terms["KL reference"] == 2 * p / 8
    assert fsdp.terms["DDP gradient buckets"] == 0
    unit = max(shape.root_unit, shape.largest_unit)  # the largest unsharded gradient: here the root's
    assert fsdp.terms["FSDP working set"] == 2 * (shape.root_unit + 2 * shape.largest_unit) + 4 * unit


def plan_cli(*args):
    return subprocess.run([sys.executable, "-m", "observe_r1.cli", "plan", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT)  # fmt: skip


def test_plan_prints_a_breakdown_and_a_verdict_for_the_papers_configs(realcases):
    for config, model in ((CONFIG_3B, realcases / QWEN_3B), (CONFIG_7B, MODEL_7B)):
        proc = plan_cli(config, "--model-config", model, "--gpus", 8, "--gpu-memory", 80)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for line in (
            "weights + grads + AdamW",
            "activations",
            "logits",
            "total",
            "FITS",
            "tokens/s",
            "GPU-hours",
        ):
            assert line in proc.stdout, proc.stdout
    ddp = plan_cli(CONFIG_7B, "parallel.strategy=ddp", "--model-config", MODEL_7B)
    assert ddp.returncode == 1 and "DOES NOT FIT" in ddp.stdout and "parallel.strategy=fsdp" in ddp.stdout
    missing = plan_cli(CONFIG_3B, "model.path=/nowhere/MyModel")
    assert missing.returncode == 2 and "--model-config" in missing.stderr + missing.stdout


SHIPPED_CONFIGS = sorted((ROOT / "configs").glob("**/*.yaml"))


def test_plan_gives_a_verdict_on_every_shipped_config_without_a_download(capsys):
    """`plan` refused every config without --model-config, even tiny_cpu.yaml whose model the framework builds
    itself: hub ids resolve to the shipped published configs, `tiny` to its own spec."""
    from observe_r1.cli import main

    for config in SHIPPED_CONFIGS:
        code = main(["plan", str(config)])
        printed = capsys.readouterr().out
        assert code == 0 and "FITS" in printed, f"{config}: {printed}"


def test_known_models_resolve_by_hub_id_or_folder_name(realcases, tmp_path):
    from observe_r1.recipes.plan import model_config_of

    published = load_model_config(realcases / QWEN_3B).to_dict()
    for path in (
        "Qwen/Qwen2.5-VL-3B-Instruct",
        "/somewhere/else/Qwen2.5-VL-3B-Instruct",
        "Qwen/Qwen2.5-VL-3B",
    ):
        config, source = model_config_of(load_config(TINY, [f"model.path={path}"]))
        assert "qwen2_5_vl_3b.json" in source
        assert {k: v for k, v in config.to_dict().items() if k not in ("_comment", "_name_or_path")} == {
            k: v for k, v in published.items() if k != "_name_or_path"
        }
    for name, billions in (
        ("Qwen/Qwen2-VL-2B-Instruct", 2.21),
        ("Qwen/Qwen2-VL-7B-Instruct", 8.29),
    ):  # published
        config, _ = model_config_of(load_config(TINY, [f"model.path={name}"]))
        assert round(shape_of(config, load_config(TINY)).total / 1e9, 2) == billions
    config, source = model_config_of(load_config(TINY))  # model.path: tiny
    assert "built-in tiny" in source


def test_the_tiny_spec_is_the_model_train_builds(tiny_model_dir):
    from observe_r1.recipes.plan import model_config_of

    config, _ = model_config_of(load_config(TINY))
    assert shape_of(config, load_config(TINY)).total == count_parameters(
        AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    )


def test_the_logits_term_of_the_8k_configs_is_under_4_gib():
    """The fp32 logits of 8k-token responses took 27.8 GiB per GPU; the output head now scores a chunk of
    positions at a time (models.policy.TokenScores)."""
    from observe_r1.recipes.plan import model_config_of

    for path in (CONFIG_3B, CONFIG_7B):
        cfg = load_config(path)
        config, _ = model_config_of(cfg)
        plan = estimate(cfg, shape_of(config, cfg), Hardware())
        assert plan.terms["logits (fp32)"] < 4 * GIB and plan.fits


def test_async_rollouts_on_engine_gpus_overlap_and_split_the_memory():
    """`--engine-gpus E` with rollout.mode=async: the step is the slower side (training on 8 - E GPUs,
    generation on E), the training GPU holds no engine and the engine GPU none of the trainer's states."""
    config = load_model_config(MODEL_7B)
    cfg = load_config(
        CONFIG_7B, ["rollout.mode=async", "rollout.max_staleness=1", "rollout.correction=behaviour"]
    )
    shape = shape_of(config, cfg)
    split = estimate(cfg, shape, Hardware(gpus=8, memory_gib=80.0, engine_gpus=4))
    together = estimate(cfg, shape, Hardware(gpus=8, memory_gib=80.0))
    assert split.step_s == max(split.train_s, split.rollout_s) and any("async step" in n for n in split.notes)
    assert together.step_s == together.train_s + together.rollout_s  # engines beside the trainers: no overlap
    assert (
        abs(split.train_s - 2 * together.train_s) < 1e-9
        and abs(split.rollout_s - 2 * together.rollout_s) < 1e-9
    )
    assert "weights + grads + AdamW" not in split.rollout and "vLLM engine" not in split.training
    assert "async engine process (same GPU)" in together.training
    if cfg.parallel.strategy == "fsdp":  # states over 4 training GPUs: twice those over 8
        assert split.terms["weights + grads + AdamW"] == 2 * together.terms["weights + grads + AdamW"]
