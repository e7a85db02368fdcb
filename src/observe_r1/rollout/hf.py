"""Rollouts with HF `generate` (KV cache, no grad, eval mode, left padding, stop at the end token).

Sampling is reproducible per response, independent of batch size, chunking and the number of processes:
instead of `torch.multinomial` on the global RNG, `GumbelSampler` adds Gumbel noise computed by hashing
(seed, group id, response index, position, token id) and `generate` takes the argmax. argmax(logits + G)
with G ~ Gumbel(0, 1) is an exact sample from softmax(logits) (the Gumbel-max trick), so this is ordinary
temperature / top-k / top-p sampling, but the same prompt gives the same responses whether it is
generated alone, in a batch of 1,024, on one process or on eight. Resume and multi-process equivalence
rest on it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.logits_process import (
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import encode_visuals, has_visuals
from observe_r1.rollout.base import PromptBatch, Rollout, SamplingParams

VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
_C1 = 0xBF58476D1CE4E5B9 - 2**64  # splitmix64 constants as signed int64
_C2 = 0x94D049BB133111EB - 2**64
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64


def _lsr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical shift right of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser: a bijective hash of int64 (multiplication wraps modulo 2**64)."""
    x = (x ^ _lsr(x, 30)) * _C1
    x = (x ^ _lsr(x, 27)) * _C2
    return x ^ _lsr(x, 31)


def sequence_seeds(seed: int, group_ids: list[int], n: int) -> torch.Tensor:
    """[len(group_ids) * n] int64 seeds, one per response, group-major."""
    g = torch.tensor(group_ids, dtype=torch.long).repeat_interleave(n)
    j = torch.arange(n, dtype=torch.long).repeat(len(group_ids))
    return mix64(mix64(mix64(torch.tensor(seed, dtype=torch.long)) + g * _GOLDEN) + j)


def response_seeds(batch: PromptBatch, n: int) -> torch.Tensor:
    """The seed of each of the n responses to each prompt: the batch's own (a continued response), else from
    (seed, group id, response index)."""
    if batch.response_seeds is not None:
        return batch.response_seeds
    return sequence_seeds(batch.seed, batch.group_ids, n)


def gumbel_noise(seeds: torch.Tensor, position: int, vocab: int, device: torch.device) -> torch.Tensor:
    """[B, vocab] float32 Gumbel(0, 1) noise, a pure function of (seed, position, token id)."""
    base = mix64(seeds.to(device) + torch.tensor(position, device=device) * _GOLDEN)  # [B], wraps
    x = mix64(base[:, None] + torch.arange(vocab, device=device, dtype=torch.long)[None, :] * _C2)
    u = (_lsr(x, 11).to(torch.float64) + 0.5) / 2.0**53  # uniform in (0, 1)
    return (-torch.log(-torch.log(u))).to(torch.float32)


class GumbelSampler(LogitsProcessor):
    """Temperature, top-k, top-p, then per-row counter-based Gumbel noise; used with greedy decoding."""

    def __init__(self, seeds: torch.Tensor, prompt_width: int, sampling: SamplingParams):
        self.seeds, self.prompt_width, self.offset = seeds, prompt_width, sampling.offset
        self.warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(sampling.temperature)]
        if sampling.top_k > 0:
            self.warpers.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(sampling.top_p))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float()
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        position = input_ids.shape[1] - self.prompt_width + self.offset
        return scores + gumbel_noise(self.seeds, position, scores.shape[-1], scores.device)


class StopOnText(StoppingCriteria):
    """Ends a row once its generated text contains one of `stops` (multi-turn rollouts' `</code>`): the tail of
    each row is decoded at every step, a few tokens per row."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...], prompt_width: int):
        self.tokenizer, self.stops, self.prompt_width = tokenizer, stops, prompt_width
        self.tail = max(len(x) for x in stops) + 2  # tokens: each holds at least one character

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        start = max(self.prompt_width, input_ids.shape[1] - self.tail)
        texts = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=False)
        return torch.tensor([any(x in t for x in self.stops) for t in texts], device=input_ids.device)


class LogprobRecorder(LogitsProcessor):
    """The sampling policy's log-probs of the tokens `generate` picks, without a second forward pass: at each
    step it keeps log_softmax(logits / temperature) of the raw logits (the trainer's formula, before any
    suppression or warping) and reads off the token picked from the previous step's (`finish` the last)."""

    def __init__(self, prompt_width: int, temperature: float):
        self.prompt_width, self.temperature = prompt_width, temperature
        self.previous: torch.Tensor | None = None
        self.columns: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.prompt_width:
            self._read(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def _read(self, tokens: torch.Tensor) -> None:
        assert self.previous is not None
        self.columns.append(self.previous.gather(1, tokens[:, None].to(self.previous.device))[:, 0].cpu())

    def finish(self, generated: torch.Tensor) -> torch.Tensor:
        """[B, T] log-probs of `generated` (the new tokens; after a row's end token they are padding)."""
        if generated.shape[1] > len(self.columns):
            self._read(generated[:, len(self.columns)])
        return torch.stack(self.columns, 1) if self.columns else torch.zeros(generated.shape)


class HFRollout:
    """The default rollout backend: the policy itself, generating with `model.generate`."""

    def __init__(self, model: Any, encoder: ChatEncoder, eos_token_ids: list[int] | None = None):
        self.model, self.encoder = model, encoder
        gen = getattr(model, "generation_config", None)
        eos = eos_token_ids or getattr(gen, "eos_token_id", None) or encoder.tokenizer.eos_token_id
        self.eos_token_ids = sorted(
            {*([eos] if isinstance(eos, int) else eos), encoder.tokenizer.eos_token_id}
        )
        # A generated image/video placeholder would make the training forward pass fail with "image features
        # and image tokens do not match"; the policy may never emit one.
        vocab = encoder.tokenizer.get_vocab()
        self.suppressed = sorted(vocab[t] for t in VISION_TOKENS if t in vocab)
        # an engine process (async rollouts) records the log-probs of what it samples: the behaviour policy's
        self.record_logprobs = False

    @property
    def returns_logprobs(self) -> bool:
        return self.record_logprobs

    def update_weights(self, model: Any) -> None:
        self.model = model  # same process, same weights: nothing to copy

    @torch.no_grad()
    def generate(self, batch: PromptBatch, sampling: SamplingParams) -> Rollout:
        n = 1 if sampling.greedy else sampling.n
        prompt_index = [i for i in range(len(batch.prompts)) for _ in range(n)]
        if batch.response_seeds is not None and n != 1:
            raise ValueError("PromptBatch.response_seeds: one response per prompt (n = 1)")
        seeds = response_seeds(batch, n)
        chunk = sampling.chunk_size or len(prompt_index)
        was_training = self.model.training
        self.model.eval()
        try:
            pieces = [
                self._generate(batch, prompt_index[s : s + chunk], seeds[s : s + chunk], sampling)
                for s in range(0, len(prompt_index), chunk)
            ]
        finally:
            self.model.train(was_training)
        width = max(p.shape[1] for p, _ in pieces)
        pad = self.encoder.pad_token_id
        ids = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=pad) for p, _ in pieces])
        rollout = self._finish(batch, ids, n, sampling.max_new_tokens)
        if all(lp is not None for _, lp in pieces):
            logprobs = torch.cat([torch.nn.functional.pad(lp, (0, width - lp.shape[1])) for _, lp in pieces])
            rollout.logprobs = logprobs * rollout.completion_mask
        return rollout

    def _generate(self, batch: PromptBatch, index: list[int], seeds: torch.Tensor, sampling: SamplingParams):
        # the n responses to a prompt share its images and videos: each distinct one is encoded once
        inputs = self.encoder.collate_shared(batch.prompts, index, padding_side="left")
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        if has_visuals(inputs):
            inputs |= encode_visuals(self.model, inputs, blanks=False)
        width = inputs["input_ids"].shape[1]
        recorder = (
            LogprobRecorder(width, sampling.temperature)
            if self.record_logprobs and not sampling.greedy
            else None
        )
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.encoder.pad_token_id,
            use_cache=True,
            suppress_tokens=None if recorder else self.suppressed,  # the recorder sees the raw logits first
        )
        order = [recorder, SuppressTokensLogitsProcessor(self.suppressed, device)] if recorder else []
        processors = LogitsProcessorList(
            [*order] + ([] if sampling.greedy else [GumbelSampler(seeds, width, sampling)])
        )
        stopping = StoppingCriteriaList(
            [StopOnText(self.encoder.tokenizer, sampling.stop, width)] if sampling.stop else []
        )
        # synced_gpus: never (transformers turns it on for a sharded model): a sharded policy generates with
        # its parameters gathered (`training.sharding.gathered`), so no process waits for another
        out = self.model.generate(
            **inputs,
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=stopping,
            synced_gpus=False,
        )
        generated = out[:, width:].cpu()
        return generated, recorder.finish(generated) if recorder else None

    def _finish(self, batch: PromptBatch, ids: torch.Tensor, n: int, max_new: int) -> Rollout:
        is_end = torch.isin(ids, torch.tensor(self.eos_token_ids))
        has_end = is_end.any(dim=1)
        first_end = torch.where(has_end, is_end.int().argmax(dim=1), ids.shape[1])
        lengths = torch.where(has_end, first_end + 1, torch.full_like(first_end, ids.shape[1]))
        lengths = lengths.clamp(max=max_new)
        texts = self.encoder.decode([row[:n_].tolist() for row, n_ in zip(ids, lengths, strict=True)])
        return Rollout.of(batch, n, ids, lengths, ~has_end, texts, self.encoder.pad_token_id)
