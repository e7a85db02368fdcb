"""Generate and score: encode prompts, sample responses with a rollout backend, and score them with the
rewards. The one chain that GRPO, evaluation and the NeuraLadder builder share.
Imports data, models, rewards and rollout."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from observe_r1.data.dataset import Sample
from observe_r1.data.prompts import with_system_prompt
from observe_r1.data.video import Video
from observe_r1.models.inputs import ChatEncoder, EncodedPrompt
from observe_r1.rewards import RewardBatch, Rewarder, RewardResult
from observe_r1.rollout.base import PromptBatch, Rollout, RolloutBackend, SamplingParams, padded
from observe_r1.rollout.multiturn import reference_tokens

log = logging.getLogger(__name__)


@dataclass
class ScoredRollout:
    """Responses to some prompts, scored: one entry of `samples` and `images` per prompt (group)."""

    samples: list[Sample]  # a prompt that failed to encode is replaced by the previous good one
    images: list[list]  # PIL images of each prompt
    rollout: Rollout
    result: RewardResult
    bad_prompts: int = 0


@dataclass
class Generated:
    """Responses not scored yet (an async engine's, when the reward callables cannot leave the trainer)."""

    samples: list[Sample]
    messages: list[list[dict]]
    images: list[list]
    rollout: Rollout
    bad_prompts: int = 0


Timer = Callable[[str], contextlib.AbstractContextManager] | None


def generate_and_score(
    backend: RolloutBackend,
    encoder: ChatEncoder,
    rewarder: Rewarder,
    samples: list[Sample],
    group_ids: list[int],
    sampling: SamplingParams,
    system: str,
    seed: int = 0,
    timer: Timer = None,
) -> ScoredRollout:
    """`sampling.n` responses to each sample's prompt (with `system` as its system prompt unless it has its
    own), scored. `group_ids` are explicit and globally unique: with `seed` they fix every sampled token.
    `timer("rollout")` / `timer("reward")` time the two stages when given."""
    return score(
        rewarder, generate(backend, encoder, samples, group_ids, sampling, system, seed, timer), timer
    )


def generate(
    backend: RolloutBackend,
    encoder: ChatEncoder,
    samples: list[Sample],
    group_ids: list[int],
    sampling: SamplingParams,
    system: str,
    seed: int = 0,
    timer: Timer = None,
) -> Generated:
    """The responses of `generate_and_score`, not scored."""
    stage = timer or (lambda name: contextlib.nullcontext())
    samples = list(samples)
    messages = [with_system_prompt(s.messages, system) for s in samples]
    prompts, images, bad, videos = encode_prompts(samples, messages, encoder)
    with stage("rollout"):
        batch = PromptBatch(prompts, group_ids, seed, images, videos=videos if any(videos) else None)
        rollout = backend.generate(batch, sampling)
    return Generated(samples, messages, images, rollout, bad)


def score(rewarder: Rewarder, got: Generated, timer: Timer = None) -> ScoredRollout:
    with (timer or (lambda name: contextlib.nullcontext()))("reward"):
        result = rewarder(reward_batch(got.rollout, got.samples, got.messages, got.images))
    return ScoredRollout(got.samples, got.images, got.rollout, result, got.bad_prompts)


def encode_prompts(
    samples: list[Sample], messages: list[list[dict]], encoder: ChatEncoder
) -> tuple[list[EncodedPrompt], list[list], int, list[list[Video]]]:
    """Encode each sample's prompt (its videos decoded now, in the bounded pool of `data.video`). One that fails
    now (an image deleted since validation, or rewritten into a decompression bomb, a video too slow to decode) is replaced (in `samples` and `messages` too) by the previous good prompt of the
    batch and counted, so batch shapes and processes stay in step."""
    prompts: list[EncodedPrompt | None] = []
    images: list[list] = []
    videos: list[list[Video]] = []
    bad = 0
    for s, m in zip(samples, messages, strict=True):
        try:
            imgs, clips = s.load_images(), s.load_videos(encoder.video)
            prompts.append(encoder.encode(m, imgs, s.id, videos=clips))
            images.append(imgs)
            videos.append(clips)
        except Exception as e:  # noqa: BLE001 - PIL raises many types (a decompression bomb is no OSError)
            log.warning(
                "prompt %s (%s) skipped at training time: %s: %s", s.id, s.source, type(e).__name__, e
            )
            prompts.append(None)
            images.append([])
            videos.append([])
            bad += 1
    good = [i for i, p in enumerate(prompts) if p is not None]
    if not good:
        raise RuntimeError(f"every prompt of this batch failed to encode: {[s.id for s in samples]}")
    for i, p in enumerate(prompts):
        if p is None:
            j = max([g for g in good if g < i], default=good[0])
            prompts[i], images[i], videos[i] = prompts[j], images[j], videos[j]
            samples[i], messages[i] = samples[j], messages[j]
    return prompts, images, bad, videos  # type: ignore[return-value]


def reference_rollout(
    samples: list[Sample], encoder: ChatEncoder, system: str, column: str, observations: bool = False
) -> Rollout:
    """The reference responses (`sample.metadata[column]`) as a Rollout: one 'response' per prompt, ending
    with the end token. With `observations`, its `<output>` blocks are tool observations: in the sequence,
    out of the loss."""
    samples = list(samples)  # a prompt that fails to encode is replaced by the previous good one, here too
    prompts, _, _, _ = encode_prompts(
        samples, [with_system_prompt(s.messages, system) for s in samples], encoder
    )
    texts = [s.metadata[column] for s in samples]
    return responses_rollout(prompts, list(range(len(samples))), texts, encoder, observations)


def responses_rollout(
    prompts: list[EncodedPrompt],
    prompt_index: list[int],
    texts: list[str],
    encoder: ChatEncoder,
    observations: bool = False,
) -> Rollout:
    """Given responses as a Rollout: response i answers `prompts[prompt_index[i]]`, tokenised after the
    prompt's generation header (the tokens the policy would generate) and ending with the end token."""
    eos = encoder.tokenizer.eos_token_id
    pieces = [reference_tokens(text, encoder, observations) for text in texts]
    completion = padded([x + [eos] for x, _ in pieces], encoder.pad_token_id)
    mask = padded([[1] * (len(x) + 1) for x, _ in pieces])
    loss_mask = padded([m + [1] for _, m in pieces])
    return Rollout(
        prompts=prompts,
        prompt_index=list(prompt_index),
        group_ids=list(prompt_index),
        completion_ids=completion,
        completion_mask=mask,
        lengths=mask.sum(1),
        truncated=torch.zeros(len(pieces), dtype=torch.bool),
        texts=list(texts),
        loss_mask=loss_mask if observations else None,
    )


def reward_batch(
    rollout: Rollout, samples: list[Sample], messages: list[list[dict]], images: list[list]
) -> RewardBatch:
    """The RewardBatch of a rollout: per response, its prompt's messages, images, gold and dataset columns.
    A multi-turn response is graded on what the model wrote (`Rollout.model_texts`); its trajectory (the text
    with the observations), tool calls, tool errors and turns are columns (`trajectory`, `tool_calls`,
    `tool_errors`, `turns`)."""
    idx = rollout.prompt_index
    columns = sorted({k for s in samples for k in s.metadata})
    mask = rollout.model_mask
    out = RewardBatch(
        completions=rollout.model_texts,
        completion_ids=[row[m.bool()].tolist() for row, m in zip(rollout.completion_ids, mask, strict=True)],
        completion_lengths=[int(n) for n in rollout.model_lengths],
        prompts=[messages[i] for i in idx],
        images=[images[i] for i in idx],
        answers=[samples[i].answer for i in idx],
        group_ids=list(rollout.group_ids),
        columns={c: [samples[i].metadata.get(c) for i in idx] for c in columns},
    )
    if rollout.traces is not None:
        out.columns |= {
            "trajectory": list(rollout.texts),
            "tool_calls": [[c.as_row() for c in t.calls] for t in rollout.traces],
            "tool_errors": [sum(bool(c.error) for c in t.calls) for t in rollout.traces],
            "turns": [t.turns for t in rollout.traces],
        }
    return out
