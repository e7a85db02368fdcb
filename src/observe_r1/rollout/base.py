"""The rollout stage's types and the backend Protocol (HF generate, vLLM). Imports models."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from observe_r1.models.inputs import EncodedPrompt
from observe_r1.tools.base import CallRecord


@dataclass(frozen=True)
class SamplingParams:
    n: int = 8  # responses per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    greedy: bool = False  # evaluation: argmax, n must be 1
    chunk_size: int = 0  # sequences per generate call; 0 = all at once
    stop: tuple[str, ...] = ()  # texts that end a response too (kept in it): multi-turn rollouts' `</code>`
    offset: int = 0  # tokens the responses already have (a partial rollout's next segment): the HF sampling
    # noise goes on from that position


@dataclass
class PromptBatch:
    prompts: list[EncodedPrompt]  # one per group
    group_ids: list[int]  # explicit, globally unique group ids (never batch positions)
    seed: int = 0  # with the group id and the response index, fixes every sampled token
    images: list[list[Any]] | None = None  # PIL images of each prompt (an engine takes images, not pixels)
    videos: list[list[Any]] | None = None  # decoded videos of each prompt (`data.video.Video`)
    # one int64 seed per prompt instead of (seed, group id, response index), with n = 1: a multi-turn
    # response's later turns
    response_seeds: torch.Tensor | None = None


@dataclass
class Trace:
    """One multi-turn response's record (rollout.multiturn): its tool calls, turns, hints and observation
    tokens, the images the tools returned (their placeholders are in the completion; their encodings are
    kept so the trainer sees exactly what the rollout did) and the text the model itself wrote."""

    calls: list[CallRecord] = field(default_factory=list)
    turns: int = 0  # model turns
    hints: int = 0
    observation_tokens: int = 0  # observation and hint tokens (no loss)
    images: list[Any] = field(default_factory=list)
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    image_tokens: list[int] = field(default_factory=list)
    model_text: str = ""


@dataclass
class Rollout:
    """n responses for each prompt, sequences in group-major order: group g's responses are rows g*n .. g*n+n-1."""

    prompts: list[EncodedPrompt]  # one per group
    prompt_index: list[int]  # [B] which prompt each sequence answers
    group_ids: list[int]  # [B]
    completion_ids: torch.Tensor  # [B, T] right-padded
    completion_mask: torch.Tensor  # [B, T] 1 for generated tokens up to and including the end token
    lengths: torch.Tensor  # [B] generated tokens including the end token
    truncated: torch.Tensor  # [B] bool: no end token within max_new_tokens
    texts: list[str]  # [B] decoded, special tokens dropped
    logprobs: torch.Tensor | None = (
        None  # [B, T] the engine's log-probs of the sampled tokens (vLLM), or None
    )
    # multi-turn: [B, T] 1 for the model's own tokens (observations and hints are in the completion, with no
    # loss); None = every completion token is the model's
    loss_mask: torch.Tensor | None = None
    traces: list[Trace] | None = None  # [B] multi-turn records
    versions: torch.Tensor | None = None  # [B, T] partial rollouts (rollout.in_flight): each token's version

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def model_mask(self) -> torch.Tensor:
        """[B, T] the tokens the model wrote (the loss mask before any other rule)."""
        return self.completion_mask if self.loss_mask is None else self.loss_mask

    @property
    def model_lengths(self) -> torch.Tensor:
        """[B] tokens the model wrote: the length the bonus, the overlong shaping and the logs use."""
        return self.lengths if self.loss_mask is None else self.loss_mask.sum(1)

    @property
    def model_texts(self) -> list[str]:
        """What the rewards grade: the model's own text (a tool's output cannot answer for it)."""
        return self.texts if self.traces is None else [t.model_text for t in self.traces]

    def vision_prompts(self, index: list[int]) -> tuple[list[EncodedPrompt], list[int]]:
        """(prompts, owner of each row of `index`) for the model inputs of those rows: a row whose tools returned
        images gets its own prompt holding the prompt's pixels and then the tools' (the order of the image
        placeholders in its sequence), the others share their group's prompt (its images encoded once)."""
        if self.traces is None or not any(self.traces[i].images for i in index):
            return self.prompts, [self.prompt_index[i] for i in index]
        prompts, owners = list(self.prompts), []
        for i in index:
            t = self.traces[i]
            if not t.images:
                owners.append(self.prompt_index[i])
                continue
            owners.append(len(prompts))
            prompts.append(with_trace_images(self.prompts[self.prompt_index[i]], t))
        return prompts, owners

    @classmethod
    def of(
        cls,
        batch: PromptBatch,
        n: int,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        truncated: torch.Tensor,
        texts: list[str],
        pad_token_id: int,
        logprobs: torch.Tensor | None = None,
    ) -> Rollout:
        """n responses to each prompt of `batch`, group-major (row r answers prompt r // n): the mask covers
        each row's first `lengths` tokens and every token after them is padding (any backend's rows)."""
        prompt_index = [i for i in range(len(batch.prompts)) for _ in range(n)]
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        return cls(
            prompts=batch.prompts,
            prompt_index=prompt_index,
            group_ids=[batch.group_ids[i] for i in prompt_index],
            completion_ids=torch.where(mask.bool(), ids, pad_token_id),
            completion_mask=mask,
            lengths=lengths,
            truncated=truncated,
            texts=texts,
            logprobs=logprobs,
        )


def padded(rows: Sequence[Sequence[float]], fill: float = 0, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """[len(rows), the longest row's length (at least 1)] the rows, right-padded with `fill`."""
    out = torch.full((len(rows), max([len(r) for r in rows] + [1])), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=dtype)
    return out


def with_trace_images(prompt: EncodedPrompt, trace: Trace, tokens: Sequence[int] = ()) -> EncodedPrompt:
    """The prompt with the images a response's tools returned after its own (the order of the placeholders in
    the response), its videos kept, and `tokens` (the response so far) appended."""
    pixels = [x for x in (prompt.pixel_values, trace.pixel_values) if x is not None]
    grids = [x for x in (prompt.image_grid_thw, trace.image_grid_thw) if x is not None]
    return dataclasses.replace(
        prompt,
        input_ids=prompt.input_ids + list(tokens),
        pixel_values=torch.cat(pixels) if pixels else None,
        image_grid_thw=torch.cat(grids) if grids else None,
        image_tokens=prompt.image_tokens + trace.image_tokens,
    )


class RolloutBackend(Protocol):
    def generate(self, batch: PromptBatch, sampling: SamplingParams) -> Rollout: ...

    def update_weights(self, model: torch.nn.Module) -> None: ...


def select_groups(parts: list[tuple[Rollout, list[int]]], n: int, pad_token_id: int) -> Rollout:
    """A Rollout made of the chosen groups of several rollouts (group-major order kept)."""
    prompts, prompt_index, group_ids, texts = [], [], [], []
    ids, masks, lengths, truncated, model_masks = [], [], [], [], []
    traces: list[Trace | None] = []
    for rollout, groups in parts:
        for g in groups:
            rows = list(range(g * n, (g + 1) * n))
            prompts.append(rollout.prompts[g])
            prompt_index += [len(prompts) - 1] * n
            group_ids += [rollout.group_ids[r] for r in rows]
            texts += [rollout.texts[r] for r in rows]
            ids.append(rollout.completion_ids[rows])
            masks.append(rollout.completion_mask[rows])
            model_masks.append(rollout.model_mask[rows])
            traces += [rollout.traces[r] for r in rows] if rollout.traces is not None else [None] * n
            lengths.append(rollout.lengths[rows])
            truncated.append(rollout.truncated[rows])
    width = max(t.shape[1] for t in ids)

    def pad(ts: list[torch.Tensor], value: float) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in ts])

    engine = [
        r.logprobs[g * n : (g + 1) * n] for r, groups in parts if r.logprobs is not None for g in groups
    ]
    versions = [
        r.versions[g * n : (g + 1) * n] for r, groups in parts if r.versions is not None for g in groups
    ]
    return Rollout(
        prompts=prompts,
        prompt_index=prompt_index,
        group_ids=group_ids,
        completion_ids=pad(ids, pad_token_id),
        completion_mask=pad(masks, 0),
        lengths=torch.cat(lengths),
        truncated=torch.cat(truncated),
        texts=texts,
        logprobs=pad(engine, 0.0) if len(engine) == len(ids) else None,
        versions=pad(versions, 0) if len(versions) == len(ids) else None,
        loss_mask=pad(model_masks, 0) if any(r.loss_mask is not None for r, _ in parts) else None,
        traces=[t or Trace() for t in traces] if any(r.traces is not None for r, _ in parts) else None,
    )
