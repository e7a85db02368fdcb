"""Loading the policy (full fine-tune or LoRA, frozen or trained vision tower) and the frozen reference,
and computing log-probabilities of completion tokens with their images (inputs from
`observe_r1.rollout.batch.sequence_inputs`), padded or packed (`observe_r1.models.packing`). A model folder's own
Python code never runs unless asked (`models.inputs.remote_code`)."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import SafetensorError, safe_open
from torch.distributed.fsdp import FSDPModule
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from observe_r1.models.inputs import VISUALS, remote_code
from observe_r1.models.packing import PACKED_SDPA, can_pack, pack, takes_encoded_images

SCORE_HEAD = "observe_r1_score_head"  # a config key: the model is a reward model with a `score` head


def load_model(
    path: str,
    attn_implementation: str = "sdpa",
    lora_base: str | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> torch.nn.Module:
    """A vision-language model, or a text-only causal LM when the checkpoint has no vision config; a LoRA
    checkpoint (adapter files only) is its base model (`lora_base`, else the one its adapter config names)
    with the adapters merged (`load_lora_merged`).
    fp32 master weights everywhere; bf16 happens under autocast on GPU (see `compute_dtype`).
    (lr 1e-6 updates vanish when added to bf16 weights.) `sdpa` loads as `PACKED_SDPA`: the same attention,
    which can also run packed micro-batches."""
    if is_lora_checkpoint(path):
        return load_lora_merged(
            path,
            lora_base,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )
    if attn_implementation == "sdpa":
        attn_implementation = PACKED_SDPA
    kwargs.setdefault("dtype", torch.float32)
    with remote_code(path, trust_remote_code):
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        auto = AutoModelForImageTextToText if getattr(config, "vision_config", None) else AutoModelForCausalLM
        scored = bool(getattr(config, SCORE_HEAD, False))
        with quiet_score_report() if scored else contextlib.nullcontext():
            model = auto.from_pretrained(
                path, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code, **kwargs
            )
    return add_score_head(model, read_score_head(path)) if scored else model


class _ScoreOnlyReport(logging.Filter):
    """Drops transformers' load report when the only key it lists is `score.weight`: the causal-LM class
    does not know the head that `load_model` adds back. A report that lists anything else is kept whole."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        keys = set(re.findall(r"^(\S+)\s+\|", message, re.M)) - {"Key"}
        return keys != {"score.weight"}


@contextlib.contextmanager
def quiet_score_report() -> Iterator[None]:
    report = logging.getLogger("transformers.modeling_utils")
    only = _ScoreOnlyReport()
    report.addFilter(only)
    try:
        yield
    finally:
        report.removeFilter(only)


def add_score_head(model: Any, weight: torch.Tensor | None = None, seed: int = 0) -> Any:
    """A reward model from a causal LM or VLM, in place: a `score` Linear(hidden, 1, bias=False) beside its
    output head, initialised as transformers initialises one (normal, `initializer_range`) or to `weight`. The
    weights are laid out as transformers' `*ForSequenceClassification` (`model.*`, `score.weight`), so a text
    model's folder also loads with `AutoModelForSequenceClassification`; the config says `num_labels: 1` and
    carries SCORE_HEAD for `load_model`. The output head stays, unused and frozen (unless tied to the input
    embeddings, which are trained)."""
    head = model.get_output_embeddings()
    score = torch.nn.Linear(
        head.in_features, 1, bias=False, device=head.weight.device, dtype=head.weight.dtype
    )
    with torch.no_grad(), torch.random.fork_rng():
        if weight is None:
            torch.manual_seed(seed)
            std = getattr(model.config.get_text_config(), "initializer_range", 0.02)
            score.weight.normal_(0.0, std)
        else:
            score.weight.copy_(weight.reshape(score.weight.shape))
    model.add_module("score", score)
    if head.weight is not model.get_input_embeddings().weight:
        head.requires_grad_(False)
    model.config.num_labels = 1
    setattr(model.config, SCORE_HEAD, True)
    return model


def read_score_head(path: str | Path) -> torch.Tensor:
    """The `score.weight` tensor of a reward model's folder (one safetensors file or a sharded index)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    try:
        name = (
            json.loads(index.read_text())["weight_map"]["score.weight"]
            if index.is_file()
            else "model.safetensors"
        )
        with safe_open(str(path / name), "pt") as f:
            return f.get_tensor("score.weight").float()
    except (KeyError, OSError, SafetensorError) as e:
        raise ValueError(
            f"{path}: its config says it is a reward model, but it has no readable score.weight ({e})"
        ) from e


def is_lora_checkpoint(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file() and not (Path(path) / "config.json").is_file()


def load_lora_merged(path: str | Path, base: str | Path | None = None, **kwargs: Any) -> torch.nn.Module:
    """A LoRA checkpoint as one model: its base (`base`, else the adapter config's `base_model_name_or_path`)
    with the adapters (and a trained vision tower, saved with them) merged in."""
    base = base or json.loads((Path(path) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base or not (Path(base) / "config.json").is_file():
        raise FileNotFoundError(f"LoRA checkpoint {path}: its base model {base!r} (adapter_config.json "
                                "base_model_name_or_path) is not a local checkpoint; pass --base-model DIR")  # fmt: skip
    return PeftModel.from_pretrained(load_model(str(base), **kwargs), str(path)).merge_and_unload()


def fresh_init(model: Any, seed: int) -> Any:
    """A newly initialised model of the same architecture (its own random draws: the global RNG is untouched)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return type(model)._from_config(model.config, dtype=torch.float32)


def vision_tower(model: Any) -> torch.nn.Module | None:
    """The vision encoder, or None for a text-only model."""
    inner = getattr(model, "model", model)
    return getattr(inner, "visual", None)


def prepare_policy(model: Any, cfg: Any) -> Any:
    """Apply `ModelConfig`: frozen vision tower, LoRA adapters, gradient checkpointing."""
    tower = vision_tower(model)
    if cfg.freeze_vision and tower is not None:
        tower.requires_grad_(False)
    if cfg.lora_rank > 0:
        # Adapters go on the language model only (the vision tower has modules of the same names). A trained
        # tower, and a reward model's score head, are peft `modules_to_save`: trained in full, saved with the
        # adapters, merged on export, and still the base ones when the adapters are disabled for the reference.
        names = "|".join(cfg.lora_target_modules)
        whole = [] if cfg.freeze_vision or tower is None else ["visual"]
        whole += ["score"] if hasattr(model, "score") else []
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=rf"^(?!.*\bvisual\b).*\.({names})$",
            modules_to_save=whole or None,
        )
        model = get_peft_model(model, lora)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
        if cfg.lora_rank > 0:
            model.enable_input_require_grads()
    return model


def enable_checkpointing(model: Any) -> None:
    """Activation (gradient) checkpointing; transformers 5.2x renamed the method and its keyword, and the old
    name warns there, so use whichever this version has."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    model.requires_grad_(False)
    return model.eval()


@contextlib.contextmanager
def reference_of(policy: torch.nn.Module, reference: torch.nn.Module | None) -> Iterator[torch.nn.Module]:
    """The reference model: a frozen copy, or the policy's base weights with its LoRA adapters disabled."""
    if reference is not None:
        yield reference
        return
    with policy.disable_adapter():  # type: ignore[operator]
        yield policy


def encode_visuals(model: Any, inputs: dict[str, torch.Tensor], blanks: bool = True) -> dict[str, Any]:
    """The vision part of the forward pass, from `ChatEncoder.collate_shared`'s inputs (its keys are popped):
    the vision tower runs once, on every distinct image and video of the batch together, and the features are
    handed to the model (`mm_encoder_outputs`, transformers >= 5.20); older versions get each row's own copy of
    its pixels. (Images and videos are the same patch rows to the tower: Qwen2-VL's and Qwen2.5-VL's
    `get_video_features` is `get_image_features`.)

    A sharded (FSDP) vision-language model runs its tower in every forward pass, on a 4-patch blank appended
    to the batch's visuals (all there is when the micro-batch has none), and always hands features to the
    model (an empty slice of the blank's when it has none): every process must gather and reduce the same
    units in the same order whatever its prompts hold, and FSDP reduces the root's gradients as soon as those
    of the model's inputs are ready (with features among them: before the tower's backward; without: after).
    `blanks=False`: not (generation, where the parameters are gathered and no collective runs)."""
    base = unwrapped(model)
    kinds = [(pk, gk, kind) for pk, gk, kind in VISUALS if f"{kind}_source" in inputs]
    pixels = [inputs.pop(pk) for pk, _, _ in kinds]
    grids = [inputs.pop(f"{gk}_distinct") for _, gk, _ in kinds]
    sources = [inputs.pop(f"{kind}_source").tolist() for _, _, kind in kinds]
    if not takes_encoded_images(base):
        chunks = [torch.split(p, g.prod(-1).tolist()) for p, g in zip(pixels, grids, strict=True)]
        return {
            pk: torch.cat([c[j] for j in s]) for (pk, _, _), c, s in zip(kinds, chunks, sources, strict=True)
        }
    blank = blanks and isinstance(base, FSDPModule) and hasattr(base, "get_image_features")
    if blank:
        blank_pixels, blank_grid = blank_visual(base)
        pixels, grids = [*pixels, blank_pixels], [*grids, blank_grid]
    if not pixels:
        return {}
    features = base.get_image_features(torch.cat(pixels), torch.cat(grids), return_dict=True)
    items, start, encoded = features.pooler_output, 0, {}
    for (_, _, kind), grid, source in zip(kinds, grids, sources, strict=False):
        mine = items[start : start + len(grid)]
        start += len(grid)
        encoded[kind] = copy.copy(features)
        encoded[kind].pooler_output = tuple(mine[j] for j in source)
    if not encoded:  # a blank only: none of its features fill a placeholder
        encoded["image"] = copy.copy(features)
        encoded["image"].pooler_output = (items[-1][:0],)
    return {"mm_encoder_outputs": encoded}


def blank_visual(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest input of the vision tower: one frame pair of 2 x 2 patches (one merged token), zeros."""
    vision = model.config.vision_config
    merge = getattr(vision, "spatial_merge_size", 2)
    width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    device = next(model.parameters()).device
    return torch.zeros(merge * merge, width, device=device), torch.tensor([[1, merge, merge]], device=device)


def has_visuals(inputs: dict[str, Any]) -> bool:
    return any(f"{kind}_source" in inputs for _, _, kind in VISUALS)


def unwrapped(model: Any) -> Any:
    """The transformers model inside DDP and peft wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def completion_logprobs(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    temperature: float = 1.0,
    entropy: bool = False,
    entropy_grad: bool = False,
    packed: bool = False,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[b, T] log-probs of the completion tokens (at the sampling temperature), and optionally the
    per-token entropy of the policy; 0 at padding. The vocabulary's logits are never whole in memory: the
    output head runs on `chunk_rows` positions at a time (`TokenScores`; default `head_chunk_rows`).
    `packed`: the sequences run end to end in one row without padding, where the model's attention allows
    it (`models.packing.can_pack`)."""

    def scorer(head: Any, targets: torch.Tensor) -> torch.nn.Module:
        return TokenScores(
            head, targets, temperature, entropy_grad, chunk_rows or head_chunk_rows(head.out_features)
        )

    scores, completion_mask, was_packed = forward_with_head(model, inputs, scorer, packed)  # [b, K, 2]
    logp, ent = scores[..., 0], None
    if entropy or entropy_grad:
        ent = scores[..., 1] if entropy_grad else scores[..., 1].detach()
    if was_packed:  # back to [b, T]
        logp = logp.new_zeros(completion_mask.shape).masked_scatter(completion_mask, logp[0])
        if ent is not None:
            ent = ent.new_zeros(completion_mask.shape).masked_scatter(completion_mask, ent[0])
    else:
        logp = logp[:, :-1].masked_fill(~completion_mask, 0.0)
        ent = None if ent is None else ent[:, :-1].masked_fill(~completion_mask, 0.0)
    return logp, ent


def sequence_scores(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """[b] a reward model's score of each sequence: its `score` head on the hidden state of the last
    completion token (the end token), as transformers' `*ForSequenceClassification` pools (the last
    non-padding token). Padded, not packed: a packed pass keeps only the positions that predict a token."""
    score = unwrapped(model).score
    out, completion_mask, _ = forward_with_head(model, inputs, lambda head, targets: score, packed=False)
    last = completion_mask.sum(1)  # output 0 is the prompt's last position, output j completion token j - 1
    return out[torch.arange(len(out), device=out.device), last, 0].float()  # [b]


def forward_with_head(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    head_for: Callable[[torch.nn.Module, torch.Tensor], torch.nn.Module],
    packed: bool,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The model's forward pass over [prompt | completion] (inputs from `sequence_inputs`, visuals encoded
    once by `encode_visuals`) with its output head replaced, for this pass only, by `head_for(head,
    targets)`. Returns the head's outputs at the kept positions, the completion mask, and whether the pass
    was packed: padded, [b, T + 1, ...] for the prompt's last position and every completion token; packed
    (`models.packing`), [1, K, ...] for the K positions that predict a completion token."""
    device = next(model.parameters()).device
    completion = inputs["completion_ids"].to(device)
    completion_mask = inputs["completion_mask"].to(device).bool()
    model_inputs: dict[str, Any] = {
        k: v.to(device) for k, v in inputs.items() if k not in ("completion_ids", "completion_mask")
    }
    model_inputs |= encode_visuals(model, model_inputs)
    base = unwrapped(model)
    keep: torch.Tensor | int
    was_packed = packed and can_pack(base)
    if was_packed:
        model_inputs, keep = pack(base, model_inputs, completion_mask)
        targets = completion[completion_mask][None]  # [1, K]: the kept positions predict these
    else:
        keep = completion.shape[1] + 1  # the last prompt position and the completion's
        targets = torch.nn.functional.pad(completion, (0, 1))  # the last position's target: dropped below
    head = base.get_output_embeddings()
    base.set_output_embeddings(head_for(head, targets))
    try:
        out = model(**model_inputs, logits_to_keep=keep, use_cache=False).logits
    finally:
        base.set_output_embeddings(head)
    return out, completion_mask, was_packed


HEAD_CHUNK_BYTES = 256 << 20  # fp32 logits of one chunk of positions: 256 MiB (about 3x that in flight)


def head_chunk_rows(vocab: int) -> int:
    """Positions the output head scores at once, so that their fp32 logits take HEAD_CHUNK_BYTES."""
    return max(1, HEAD_CHUNK_BYTES // (4 * vocab))


class TokenScores(torch.nn.Module):
    """Stands in for the output head during one forward pass (`completion_logprobs`): for each position, the
    log-prob of its target token and the policy's entropy, [..., 2], computed from the head's logits `rows`
    positions at a time. In training each chunk is checkpointed: its logits are recomputed in the backward
    instead of being kept, so the [positions, vocab] logits (27.8 GiB per GPU for 8k-token responses) never
    exist at once. The values and gradients are those of the whole computation (tests/test_models.py)."""

    def __init__(
        self, head: torch.nn.Module, targets: torch.Tensor, temperature: float, entropy_grad: bool, rows: int
    ):
        super().__init__()
        self.head, self.targets, self.temperature = head, targets, temperature
        self.entropy_grad, self.rows = entropy_grad, rows

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat, targets = hidden.reshape(-1, hidden.shape[-1]), self.targets.reshape(-1)
        scores = []
        for start in range(0, len(flat), self.rows):
            h, y = flat[start : start + self.rows], targets[start : start + self.rows]
            if torch.is_grad_enabled() and h.requires_grad:
                scores.append(checkpoint(self._score, h, y, use_reentrant=False))
            else:
                scores.append(self._score(h, y))
        return torch.cat(scores).view(*hidden.shape[:-1], 2)

    def _score(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden).float() / self.temperature
        log_norm = torch.logsumexp(logits, dim=-1)
        logp = logits.gather(-1, targets[:, None]).squeeze(-1) - log_norm
        with torch.set_grad_enabled(self.entropy_grad and torch.is_grad_enabled()):
            ent = log_norm - (torch.softmax(logits, dim=-1) * logits).sum(-1)
        return torch.stack([logp, ent if self.entropy_grad else ent.detach()], -1)
