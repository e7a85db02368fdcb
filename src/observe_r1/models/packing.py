"""Packed micro-batches: a micro-batch's sequences laid end to end in one row, without padding, for the
training passes (log-probs of the policy, the rollout policy and the reference).

A padded micro-batch computes every layer on `b x (longest prompt + longest completion)` positions; packed,
it computes the real tokens only. Attention must then stay inside each sequence. Two ways, both through
transformers' attention registry (no patching):
- `flash_attention_2/3` (GPU, where installed) take the sequence boundaries (`cu_seq_lens_q/k`) and run
  their variable-length kernels;
- otherwise models load with `PACKED_SDPA`, which is plain `sdpa` unless boundaries are given, and then runs
  `sdpa` once per sequence (causal). transformers' own packing (position ids restarting per sequence)
  builds a dense block mask instead, which is slower than padding on CPU.
Positions restart at 0 in each sequence; a Qwen-VL model's 3D (M-RoPE) positions are computed per sequence
exactly as for the padded batch and carried over. Imports nothing of observe_r1.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_SDPA = "observe_r1_sdpa"
BOUNDARY_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def packed_sdpa(module: torch.nn.Module, query, key, value, attention_mask, **kwargs: Any):
    """`sdpa`, run once per sequence when the sequence boundaries `cu_seq_lens_q` are given."""
    bounds = kwargs.pop("cu_seq_lens_q", None)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    for name in BOUNDARY_KEYS[1:]:
        kwargs.pop(name, None)
    kwargs["is_causal"] = True
    edges = bounds.tolist()
    outputs = [
        sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None, **kwargs)[0]
        for s, e in zip(edges, edges[1:], strict=False)
    ]
    return torch.cat(outputs, dim=1), None


def packed_sdpa_mask(attention_mask: torch.Tensor | None = None, **kwargs: Any):
    """`sdpa`'s mask, except that a call without a padding mask (a packed row, or one unpadded sequence) gets
    none: attention is then causal within each sequence, and a dense block mask is never built."""
    if attention_mask is None:
        return None
    return sdpa_mask(attention_mask=attention_mask, **kwargs)


AttentionInterface.register(PACKED_SDPA, packed_sdpa)
AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)


def can_pack(model: Any) -> bool:
    """Whether this model's attention respects sequence boundaries, and its images can be handed over
    already encoded (a vision tower run inside the forward pass would receive the boundaries too)."""
    config = model.config
    packs = config._attn_implementation == PACKED_SDPA or config._attn_implementation.startswith(
        "flash_attention"
    )
    is_vlm = getattr(config, "vision_config", None) is not None
    return packs and (not is_vlm or takes_encoded_images(model))


def takes_encoded_images(model: Any) -> bool:
    """Whether the model's forward takes images already encoded (`mm_encoder_outputs`, transformers >= 5.20)."""
    return "mm_encoder_outputs" in inspect.signature(model.forward).parameters


def pack(
    model: Any, inputs: dict[str, Any], completion_mask: torch.Tensor
) -> tuple[dict[str, Any], torch.Tensor]:
    """Packed model inputs from a padded batch (`[left-padded prompt | right-padded completion]` with its
    `attention_mask`; images already encoded), and the packed positions whose logits predict the completion
    tokens (in `completion_mask` order, row by row)."""
    mask = inputs["attention_mask"].bool()
    lengths = mask.sum(1)
    bounds = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    text_positions = mask.long().cumsum(1) - 1
    packed = {
        k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")
    }
    packed["input_ids"] = inputs["input_ids"][mask][None]
    grids = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in inputs}
    if "mm_token_type_ids" in inputs and ("image_grid_thw" in grids or "video_grid_thw" in grids):
        vision_positions, _ = model.model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            attention_mask=inputs["attention_mask"],
            **grids,
        )
        positions = torch.cat([text_positions[None], vision_positions.to(text_positions)])  # [4, b, T]
        packed["position_ids"] = positions[:, mask][:, None]  # [4, 1, N]: text, then temporal/height/width
        packed["mm_token_type_ids"] = inputs["mm_token_type_ids"][mask][None]
    else:
        packed["position_ids"] = text_positions[mask][None]
    longest = int(lengths.max())
    packed |= dict(zip(BOUNDARY_KEYS, (bounds, bounds, longest, longest), strict=True))
    # packed index of every padded position; a completion token is predicted by the position before it
    index = mask.flatten().long().cumsum(0).view_as(mask) - 1
    width = completion_mask.shape[1]
    start = mask.shape[1] - width
    keep = index[:, start - 1 : start - 1 + width][completion_mask]
    return packed, keep
