"""Tiny but real Qwen2.5-VL models, built locally (random weights + a locally trained tokenizer).

Nothing is downloaded: the architecture is transformers' own `Qwen2_5_VLForConditionalGeneration`,
the tokenizer is a byte-level BPE trained with the `tokenizers` library on the synthetic task text,
and the image processor is Qwen2-VL's. The output directory loads with
`AutoModelForImageTextToText.from_pretrained` and `AutoTokenizer.from_pretrained` like a hub checkpoint.

Sizes: `tiny` (~0.6M parameters, for tests), `small` (~4M, big enough to learn the synthetic tasks) and
`medium` (~25M text model, for speed benchmarks).
`build_like` starts instead from a real checkpoint's `config.json` (e.g. Qwen2.5-VL-3B-Instruct's): the
real widths, vision tower and token ids at a reduced depth, with a local tokenizer whose special tokens
sit at the real ids, and the real chat template and image-processor config when they are beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from observe_r1.models.inputs import load_image_processor
from observe_r1.toy.synth import corpus

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
TAG_TOKENS = ["<observe>", "</observe>", "<think>", "</think>", "<answer>", "</answer>"]

# Qwen2-VL's chat layout: each image part becomes <|vision_start|><|image_pad|><|vision_end|> (a video part
# the same with <|video_pad|>); the adapter (observe_r1.models.inputs) expands the pad to the item's tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        text=dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            mrope_section=[4, 6, 6],
        ),
        vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, fullatt_block_indexes=[1]),
        vocab_size=512,
    ),
    "small": dict(
        text=dict(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            mrope_section=[8, 12, 12],
        ),
        vision=dict(
            depth=4, hidden_size=128, intermediate_size=256, num_heads=4, fullatt_block_indexes=[1, 3]
        ),
        vocab_size=768,
    ),
    "medium": dict(  # tens of millions of parameters: the variable-length speed benchmark (bench/vs_trl.py)
        text=dict(
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=2,
            mrope_section=[8, 12, 12],
        ),
        vision=dict(
            depth=4, hidden_size=256, intermediate_size=512, num_heads=4, fullatt_block_indexes=[1, 3]
        ),
        vocab_size=768,
    ),
}

# Qwen2 / Qwen2.5-VL / Qwen3-VL added tokens, in id order from <|endoftext|> (the config's bos_token_id).
QWEN_ADDED_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip

MIN_PIXELS = 56 * 56
MAX_PIXELS = 224 * 224


def _byte_level(tok: Tokenizer) -> Tokenizer:
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(
    vocab_size: int, seed: int = 0, special_ids: dict[str, int] | None = None
) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text is encodable) with single-digit tokens and the tags as single tokens.

    `special_ids`: put the special tokens at these ids (a real checkpoint's), filling the ids in between
    with placeholder tokens that encoding never produces."""
    tok = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[] if special_ids else SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed=seed), trainer=trainer)
    if special_ids:
        model = json.loads(tok.to_str())["model"]
        vocab = dict(model["vocab"])
        by_id = {i: t for t, i in special_ids.items()}
        for i in range(len(vocab), max(special_ids.values()) + 1):
            vocab[by_id.get(i, f"<|unused_{i}|>")] = i
        merges = [(a, b) for a, b in (m.split(" ") if isinstance(m, str) else m for m in model["merges"])]
        tok = _byte_level(Tokenizer(models.BPE(vocab, merges)))
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_ids])
    # Tags are ordinary (non-special) added tokens: decoding keeps them, rewards can read them.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
        padding_side="left",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )


def tiny_config(tokenizer: PreTrainedTokenizerFast, size: str = "tiny") -> Qwen2_5_VLConfig:
    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; choose from {', '.join(SIZES)}")
    spec = SIZES[size]
    text = dict(spec["text"])
    ids: dict[str, int] = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}  # type: ignore[misc]
    text_config = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        rope_scaling={
            "rope_type": "default",
            "mrope_section": text.pop("mrope_section"),
            "rope_theta": 10000.0,
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
        **text,
    )
    vision_config = dict(
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        out_hidden_size=text_config["hidden_size"],
        **spec["vision"],
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def tiny_model_config(size: str = "tiny", seed: int = 0) -> Qwen2_5_VLConfig:
    """The config of the model `build_tiny_vlm` builds (its tokenizer is trained, nothing is written): what
    `observe-r1 plan` plans for `model.path: tiny`."""
    return tiny_config(train_tokenizer(SIZES[size]["vocab_size"] if size in SIZES else 0, seed=seed), size)


def build_tiny_vlm(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised tiny Qwen2.5-VL + tokenizer + image processor to `out_dir`."""
    out = Path(out_dir)
    tokenizer = train_tokenizer(SIZES[size]["vocab_size"] if size in SIZES else 0, seed=seed)
    config = tiny_config(tokenizer, size)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    _save(model, tokenizer, out)
    Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS).save_pretrained(out)
    return out


def build_tiny_lm(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """The text half of `build_tiny_vlm`: a randomly initialised Qwen2 causal LM of the same size with the
    same tokenizer (no image processor), for text-only training and the side-by-side benchmark with TRL."""
    out = Path(out_dir)
    tokenizer = train_tokenizer(SIZES[size]["vocab_size"] if size in SIZES else 0, seed=seed)
    text = tiny_config(tokenizer, size).get_text_config().to_dict()
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")  # fmt: skip
    config = Qwen2Config(**{k: text[k] for k in keep}, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                         tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    _save(model, tokenizer, out)
    return out


def _save(model: Any, tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(model.config.get_text_config(), key))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_like(
    like: str | Path, out_dir: str | Path, layers: int = 2, vision_layers: int = 2, seed: int = 0
) -> Path:
    """A random-init model with a real checkpoint's architecture (`like`: its config.json or its folder) at
    `layers` decoder layers and `vision_layers` vision blocks; widths, vision config and token ids are kept.
    The folder's chat template, image-processor config and generation config are carried over."""
    src = Path(like)
    src_dir = src if src.is_dir() else src.parent
    config = AutoConfig.from_pretrained(src_dir if src.is_dir() else src)
    text, vision = config.get_text_config(), getattr(config, "vision_config", None)
    if not 1 <= layers <= text.num_hidden_layers:
        raise ValueError(f"--layers must be in 1..{text.num_hidden_layers}, got {layers}")
    text.num_hidden_layers = layers
    if getattr(text, "layer_types", None):
        text.layer_types = text.layer_types[:layers]
    if vision is not None:
        depth = vision.depth
        if not 1 <= vision_layers <= depth:
            raise ValueError(f"--vision-layers must be in 1..{depth}, got {vision_layers}")
        vision.depth = vision_layers
        if getattr(vision, "fullatt_block_indexes", None):  # keep the last block full attention
            vision.fullatt_block_indexes = sorted(
                {i for i in vision.fullatt_block_indexes if i < vision_layers} | {vision_layers - 1}
            )
    tokenizer = train_tokenizer(768, seed=seed, special_ids=qwen_special_ids(config))
    if len(tokenizer) > text.vocab_size:
        raise ValueError(
            f"the tokenizer needs {len(tokenizer)} ids but the config has vocab_size {text.vocab_size}"
        )
    template = src_dir / "chat_template.json"
    if template.is_file():
        tokenizer.chat_template = json.loads(template.read_text())["chat_template"]
    torch.manual_seed(seed)
    model = (
        AutoModelForImageTextToText.from_config(config) if vision is not None else Qwen2ForCausalLM(config)
    )
    out = Path(out_dir)
    generation = src_dir / "generation_config.json"
    if generation.is_file():
        model.generation_config = GenerationConfig.from_pretrained(src_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    else:
        _save(model, tokenizer, out)
    if vision is not None:
        # the folder's processor, saved in the current, known form; Qwen's defaults without one
        (load_image_processor(src_dir) or Qwen2VLImageProcessorPil()).save_pretrained(out)
    return out


def qwen_special_ids(config: Any) -> dict[str, int]:
    """Qwen's added tokens at their ids, checked against the ids the config names."""
    start = config.get_text_config().bos_token_id
    if start is None:
        start = getattr(config, "bos_token_id", None)
    ids = {t: start + i for i, t in enumerate(QWEN_ADDED_TOKENS)}
    named = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
             "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}  # fmt: skip
    for key, token in named.items():
        value = getattr(config, key, None)
        if value is not None and value != ids[token]:
            raise ValueError(f"config {key}={value}, but Qwen's layout from bos_token_id={start} puts {token} "
                             f"at {ids[token]}: only Qwen2 / Qwen2.5 / Qwen3 token layouts are supported")  # fmt: skip
    return ids


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
