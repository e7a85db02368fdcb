"""The Visual Attention Score (VAS; "From Narrow to Panoramic Vision", AVAR): how much of its attention a
vision-language model spends on the image while it writes.

    VAS_l = mean over the response's tokens t and the heads h of  sum over visual positions j of  A_l[h, t, j]

per decoder layer l (A: the attention probabilities, each row summing to 1 over the positions it may see), and
VAS = the mean over layers. Visual positions are the image and video placeholder tokens of the prompt. The
weights come from one extra forward pass in eager attention (the implementation that returns them), on a
probe batch only; the model's own attention implementation is restored after it, so training keeps its fast
attention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from observe_r1.models.policy import encode_visuals, unwrapped


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """The model in eager attention for the block, then its own implementation(s) again."""
    base = unwrapped(model)
    named = [name for name in base.config.sub_configs if getattr(base.config, name, None) is not None]
    subs = {name: getattr(base.config, name)._attn_implementation for name in named}
    previous: Any = (
        {"": base.config._attn_implementation, **subs} if subs else base.config._attn_implementation
    )
    base.set_attn_implementation("eager")
    try:
        yield
    finally:
        base.set_attn_implementation(previous)


@torch.no_grad()
def visual_attention(
    model: Any, inputs: dict[str, torch.Tensor], visual_ids: list[int]
) -> tuple[torch.Tensor, int]:
    """([layers] the attention mass onto visual positions summed over the response tokens of `inputs`' rows
    (each a mean over heads), the number of those tokens): inputs from `sequence_inputs`; rows whose prompt has
    no visual token are left out (their VAS is undefined)."""
    device = next(model.parameters()).device
    completion_mask = inputs["completion_mask"].to(device).bool()
    model_inputs = {
        k: v.to(device) for k, v in inputs.items() if k not in ("completion_ids", "completion_mask")
    }
    model_inputs |= encode_visuals(model, model_inputs, blanks=False)
    visual = torch.isin(model_inputs["input_ids"], torch.tensor(visual_ids, device=device))  # [b, L]
    with eager_attention(model):
        out = model(**model_inputs, output_attentions=True, use_cache=False, logits_to_keep=1)
    width = completion_mask.shape[1]
    counted = completion_mask & visual.any(1, keepdim=True)  # [b, T]
    mass = [
        ((a[:, :, -width:, :].float() * visual[:, None, None, :]).sum(-1).mean(1) * counted).sum()
        for a in out.attentions
    ]  # per layer: [b, heads, T, L] -> onto visual [b, T] -> summed over counted tokens
    return torch.stack(mass), int(counted.sum())
