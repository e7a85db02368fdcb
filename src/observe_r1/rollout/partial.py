"""Partial rollouts (`rollout.in_flight`, async mode): a response generated in segments of `segment` new
tokens, with a look for new weights between segments, so that an update published while a request is in
progress reaches it at once instead of after its longest response.

  partial  the responses in progress go on with the new weights (Kimi k1.5's and AReaL's partial rollouts):
           each token's version is recorded (`Rollout.versions`) and the behaviour log-probs are those of
           the weights that sampled it, which the off-policy correction reads
  restart  the request is generated again from its start with the new weights (`restarts`: how often, for
           the last request)

A segment continues its rows from the prompt and the tokens so far (`with_trace_images`: images and videos
kept) with the same response seeds, the sampling noise going on from the position reached
(`SamplingParams.offset`): with weights that do not change, the tokens are those of an unsegmented rollout
(up to float rounding of the prefix, recomputed instead of cached). Cost: each segment encodes its prefix
again (one forward pass over prompt + tokens so far), so short segments cost more. HF generate only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from observe_r1.models.inputs import ChatEncoder
from observe_r1.rollout.base import (
    PromptBatch,
    Rollout,
    RolloutBackend,
    SamplingParams,
    Trace,
    padded,
    with_trace_images,
)
from observe_r1.rollout.hf import response_seeds


class PartialRollout:
    """A rollout backend that generates `segment` tokens at a time and calls `between()` (which takes any
    published weights and returns the policy version now loaded) before each segment."""

    def __init__(
        self,
        backend: RolloutBackend,
        encoder: ChatEncoder,
        segment: int,
        between: Callable[[], int],
        restart: bool = False,
    ):
        if segment < 1:
            raise ValueError("rollout.segment_tokens must be >= 1")
        self.backend, self.encoder, self.segment = backend, encoder, segment
        self.between, self.restart = between, restart
        self.restarts = 0  # times the last request was begun again because new weights came in (restart)

    @property
    def returns_logprobs(self) -> bool:
        return bool(getattr(self.backend, "returns_logprobs", False))

    def update_weights(self, model: Any) -> None:
        self.backend.update_weights(model)

    def generate(self, batch: PromptBatch, sampling: SamplingParams) -> Rollout:
        n = 1 if sampling.greedy else sampling.n
        seeds = response_seeds(batch, n)
        rows = len(batch.prompts) * n
        self.restarts = 0
        while True:
            started = version = self.between()
            tokens: list[list[int]] = [[] for _ in range(rows)]
            logprobs: list[list[float]] = [[] for _ in range(rows)]
            versions: list[list[int]] = [[] for _ in range(rows)]
            ended = [False] * rows
            pending = list(range(rows))
            while pending:
                if tokens[pending[0]]:  # not the first segment: new weights may have come in
                    version = self.between()
                    if version != started and self.restart:
                        break
                got = self._segment(batch, sampling, n, seeds, pending, tokens)
                for row, i in enumerate(pending):
                    ids = got.completion_ids[row, : int(got.lengths[row])].tolist()
                    tokens[i] += ids
                    versions[i] += [version] * len(ids)
                    if got.logprobs is not None:
                        logprobs[i] += got.logprobs[row, : len(ids)].tolist()
                    ended[i] = not bool(got.truncated[row])
                pending = [i for i in pending if not ended[i] and len(tokens[i]) < sampling.max_new_tokens]
            if not pending:
                return self._rollout(batch, n, tokens, logprobs, versions, ended)
            self.restarts += 1

    def _segment(
        self,
        batch: PromptBatch,
        sampling: SamplingParams,
        n: int,
        seeds: torch.Tensor,
        rows: list[int],
        tokens: list[list[int]],
    ) -> Rollout:
        """The next segment of `rows`, which have all generated the same number of tokens so far."""
        done = len(tokens[rows[0]])
        step = replace(
            sampling, n=1, max_new_tokens=min(self.segment, sampling.max_new_tokens - done), offset=done
        )
        cont = PromptBatch(
            [with_trace_images(batch.prompts[i // n], Trace(), tokens[i]) for i in rows],
            [batch.group_ids[i // n] for i in rows],
            batch.seed,
            [batch.images[i // n] for i in rows] if batch.images else None,
            [batch.videos[i // n] for i in rows] if batch.videos else None,
            response_seeds=seeds[rows],
        )
        return self.backend.generate(cont, step)

    def _rollout(
        self,
        batch: PromptBatch,
        n: int,
        tokens: list[list[int]],
        logprobs: list[list[float]],
        versions: list[list[int]],
        ended: list[bool],
    ) -> Rollout:
        pad = self.encoder.pad_token_id
        lengths = torch.tensor([len(t) for t in tokens], dtype=torch.long)
        truncated = torch.tensor([not e for e in ended])
        texts = self.encoder.decode(tokens)
        recorded = self.returns_logprobs and all(logprobs)  # HF records none when greedy
        engine = padded(logprobs, dtype=torch.float32) if recorded else None
        rollout = Rollout.of(batch, n, padded(tokens, pad), lengths, truncated, texts, pad, engine)
        rollout.versions = padded(versions)
        return rollout
