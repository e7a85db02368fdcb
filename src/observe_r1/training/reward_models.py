"""Rewards computed by models: the `reward_model` term (a Bradley-Terry reward model trained by `observe-r1 rm`,
or any checkpoint with a score head, `models.policy.add_score_head`), and the `judge` term (training.judges).

The term is a whole-batch term (`rewards.terms.whole_batch`): it scores every response of a step at once, in
the trainer process, `reward.reward_model.batch_size` sequences per forward pass, on the trainer's device. The
reward model reads the prompt as the policy saw it (its system prompt included) and the response text, each
encoded with the reward model's own tokenizer and chat template, with the prompt's images when it is a VLM.
It is loaded at its first call, once per process (an async engine process loads its own copy).
Left out: a reward model sharded (FSDP) across the training processes, or served in a process of its own.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from observe_r1.config import Config
from observe_r1.models.inputs import ChatEncoder, EncodedPrompt
from observe_r1.models.policy import sequence_scores
from observe_r1.rollout.batch import chunks, sequence_inputs
from observe_r1.training import runtime, setup
from observe_r1.training.judges import Judge
from observe_r1.training.scoring import responses_rollout


def score_responses(
    model: torch.nn.Module,
    encoder: ChatEncoder,
    prompts: Sequence[EncodedPrompt],
    prompt_index: Sequence[int],
    texts: Sequence[str],
    batch_size: int,
    dtype: str = "bfloat16",
) -> list[float]:
    """A reward model's score of each response (`texts[i]` answers `prompts[prompt_index[i]]`), without
    gradients, `batch_size` sequences per forward pass."""
    rollout = responses_rollout(list(prompts), list(prompt_index), list(texts), encoder)
    device = next(model.parameters()).device
    out: list[float] = []
    with torch.no_grad(), runtime.autocast(device, dtype):
        for idx in chunks(range(len(texts)), batch_size):
            out += sequence_scores(model, sequence_inputs(rollout, idx, encoder)).tolist()
    return out


class RewardModelTerm:
    """The `reward_model` term: `reward.reward_model`'s model scores each response (raw, standardized over the
    step's responses, or through a sigmoid). Called with the whole batch (`whole_batch`)."""

    whole_batch = True
    __name__ = "reward_model"

    def __init__(self, cfg: Config):
        self.cfg, self.path = cfg, cfg.reward.reward_model.path
        self._loaded: tuple[torch.nn.Module, ChatEncoder] | None = None

    def __getstate__(self) -> dict[str, Any]:  # sent to another process without the model: it loads its own
        return {**self.__dict__, "_loaded": None}

    def loaded(self) -> tuple[torch.nn.Module, ChatEncoder]:
        if self._loaded is None:
            model, encoder = setup.load_frozen(self.cfg, self.path)
            if not hasattr(model, "score"):
                raise ValueError(
                    f"reward.reward_model.path: {self.path} has no score head: train one with `observe-r1 rm` "
                    "(its OUTPUT/model), or give a checkpoint it wrote"
                )
            self._loaded = (model, encoder)
        return self._loaded

    def __call__(
        self, completions: list[str], prompts: list[list[dict]], images: list[list], **_: Any
    ) -> list[float]:
        model, encoder = self.loaded()
        owners: dict[int, int] = {}  # a group's responses share their prompt's messages: encoded once
        for i, messages in enumerate(prompts):
            owners.setdefault(id(messages), i)
        slot = {key: j for j, key in enumerate(owners)}
        encoded = [encoder.encode(prompts[i], images[i], f"response {i}") for i in owners.values()]
        index = [slot[id(messages)] for messages in prompts]
        rm = self.cfg.reward.reward_model
        scores = score_responses(
            model, encoder, encoded, index, completions, rm.batch_size, self.cfg.model.dtype
        )
        if rm.scores == "standardized" and len(scores) > 1:
            mean, std = statistics.fmean(scores), statistics.pstdev(scores)
            scores = [(s - mean) / (std + 1e-6) for s in scores]
        elif rm.scores == "sigmoid":
            scores = torch.sigmoid(torch.tensor(scores, dtype=torch.float64)).tolist()
        return scores


MODEL_TERMS: dict[str, Callable[[Config], Callable[..., list]]] = {
    "reward_model": RewardModelTerm,
    "judge": Judge,
}


def model_terms(cfg: Config) -> dict[str, Callable[..., list]]:
    """The model-backed reward terms that `reward.terms` names, by name (lazy: nothing loads until scored)."""
    names = {t.key for t in cfg.reward.terms}
    return {name: make(cfg) for name, make in MODEL_TERMS.items() if name in names}


def with_model_terms(cfg: Config, given: setup.Inputs) -> setup.Inputs:
    """`given` with the model-backed terms its config names among its reward callables, in place (a staged
    run's later stages share the loaded model); a callable given under the same name wins."""
    given.rewards = {**model_terms(cfg), **given.rewards}
    return given
