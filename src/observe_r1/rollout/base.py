"""The rollout stage's types and the backend Protocol (HF generate, vLLM). Imports models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from observe_r1.models.inputs import EncodedPrompt


@dataclass(frozen=True)
class SamplingParams:
    n: int = 8  # responses per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    greedy: bool = False  # evaluation: argmax, n must be 1
    chunk_size: int = 0  # sequences per generate call; 0 = all at once


@dataclass
class PromptBatch:
    prompts: list[EncodedPrompt]  # one per group
    group_ids: list[int]  # explicit, globally unique group ids (never batch positions)
    seed: int = 0  # with the group id and the response index, fixes every sampled token
    images: list[list[Any]] | None = None  # PIL images of each prompt (an engine takes images, not pixels)


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

    def __len__(self) -> int:
        return len(self.texts)

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


class RolloutBackend(Protocol):
    def generate(self, batch: PromptBatch, sampling: SamplingParams) -> Rollout: ...

    def update_weights(self, model: torch.nn.Module) -> None: ...


def select_groups(parts: list[tuple[Rollout, list[int]]], n: int, pad_token_id: int) -> Rollout:
    """A Rollout made of the chosen groups of several rollouts (group-major order kept)."""
    prompts, prompt_index, group_ids, texts = [], [], [], []
    ids, masks, lengths, truncated = [], [], [], []
    for rollout, groups in parts:
        for g in groups:
            rows = list(range(g * n, (g + 1) * n))
            prompts.append(rollout.prompts[g])
            prompt_index += [len(prompts) - 1] * n
            group_ids += [rollout.group_ids[r] for r in rows]
            texts += [rollout.texts[r] for r in rows]
            ids.append(rollout.completion_ids[rows])
            masks.append(rollout.completion_mask[rows])
            lengths.append(rollout.lengths[rows])
            truncated.append(rollout.truncated[rows])
    width = max(t.shape[1] for t in ids)

    def pad(ts: list[torch.Tensor], value: float) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in ts])

    engine = [
        r.logprobs[g * n : (g + 1) * n] for r, groups in parts if r.logprobs is not None for g in groups
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
    )
