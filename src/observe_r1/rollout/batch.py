"""A rollout step's batch: the Trajectory that carries one step's responses through the stages, and the
model inputs of any of its sequences. Imports data, models, rewards, algos and rollout.base."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from observe_r1.algos import Advantages
from observe_r1.data.dataset import Sample
from observe_r1.models.inputs import ChatEncoder
from observe_r1.rewards import RewardResult
from observe_r1.rollout.base import Rollout


@dataclass
class Trajectory:
    """One rollout step of this process. It picks up what each stage adds: the advantages after scoring,
    then the loss mask and token advantages, the rollout policy's and the reference's log-probs."""

    samples: list[Sample]  # one per group
    indices: list[int]  # each group's position in the dataset
    images: list[list]  # one list of PIL images per group
    rollout: Rollout
    rewards: RewardResult
    tries: int = 1  # draws (dynamic sampling)
    bad_prompts: int = 0
    advantages: Advantages | None = None
    mask: torch.Tensor | None = None  # [B, T] loss mask
    token_advantages: torch.Tensor | None = None  # [B, T]
    old_logp: torch.Tensor | None = None  # [B, T] the rollout policy's, when the update is off-policy
    ref_logp: torch.Tensor | None = None  # [B, T] the reference's, with the KL on
    versions: list[int] = field(default_factory=list)  # per group: the policy version that generated it
    metrics: dict[str, float] = field(default_factory=dict)  # the rollout source's (async: staleness, waits)

    def __len__(self) -> int:
        return len(self.rollout)


def chunks(seq, size: int) -> list[list[int]]:
    """Consecutive index lists of at most `size` (mini- and micro-batches)."""
    seq = list(seq)
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def micro_batches(rollout: Rollout, mini: int, micro: int) -> list[list[list[int]]]:
    """Each mini-batch's micro-batches. Inside a mini-batch the sequences go longest first, so each
    micro-batch, trimmed to its longest completion, carries little padding; the optimiser step still sums
    over the same sequences."""
    by_length = [sorted(m, key=lambda i: -int(rollout.lengths[i])) for m in chunks(range(len(rollout)), mini)]
    return [chunks(m, micro) for m in by_length]


def sequence_inputs(rollout: Rollout, index: list[int], encoder: ChatEncoder) -> dict[str, torch.Tensor]:
    """Model inputs for sequences `index`: [left-padded prompt | right-padded completion], trimmed to the
    longest completion among them (so micro-batches of short responses stay short). The n responses to one
    prompt share its images, encoded once (`ChatEncoder.collate_shared`)."""
    width = int(rollout.lengths[index].max())
    prompts, owners = rollout.vision_prompts(index)  # a multi-turn row's tool images follow its prompt's
    batch = encoder.collate_shared(prompts, owners, padding_side="left")
    completion = rollout.completion_ids[index, :width]
    completion_mask = rollout.completion_mask[index, :width]
    batch["input_ids"] = torch.cat([batch["input_ids"], completion], dim=1)
    batch["attention_mask"] = torch.cat([batch["attention_mask"], completion_mask], dim=1)
    if "mm_token_type_ids" in batch:  # the model writes text; a tool's image in an observation is an image
        images = ((completion == encoder.image_token_id) & completion_mask.bool()).long()
        batch["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], images], 1)
    batch["completion_ids"], batch["completion_mask"] = completion, completion_mask
    return batch
