"""Preference and warm-start math: the DPO loss (Metis-SPECS's preference cold start), the Bradley-Terry loss
of a reward model, and shrink-and-perturb. Pure tensor functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(
    policy_chosen: torch.Tensor,  # [P] summed log-probs of each pair's chosen response under the policy
    policy_rejected: torch.Tensor,  # [P]
    reference_chosen: torch.Tensor,  # [P] the same under the frozen reference
    reference_rejected: torch.Tensor,  # [P]
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) (Rafailov et al. 2023, eq. 7)
    and the implicit reward margin beta * (...), both [P]; the caller averages."""
    margin = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
    return -F.logsigmoid(margin), margin.detach()


def bradley_terry_loss(
    chosen: torch.Tensor,  # [P] the reward model's score of each pair's chosen response
    rejected: torch.Tensor,  # [P] ... and of its rejected one
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair reward-model loss -log sigmoid(r_c - r_r) (Bradley & Terry 1952; InstructGPT, Ouyang et al.
    2022, eq. 1) + center_coef * (r_c + r_r)^2 (which keeps the scores centred on 0: Eisenstein et al. 2023,
    TRL's center_rewards_coefficient), and the margin r_c - r_r, both [P]; the caller averages."""
    margin = chosen - rejected
    return -F.logsigmoid(margin) + center_coef * (chosen + rejected) ** 2, margin.detach()


@torch.no_grad()
def shrink_perturb(
    old: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], shrink: float = 0.4, perturb: float = 0.1
) -> dict[str, torch.Tensor]:
    """new = shrink * old + perturb * fresh, tensor by tensor (Ash & Adams 2020, "On Warm-Starting Neural
    Network Training"): `fresh` is a newly initialised model of the same architecture. Integer tensors (buffers
    such as position ids) are kept as they are."""
    if old.keys() != fresh.keys():
        raise ValueError(f"shrink_perturb: the models differ ({sorted(old.keys() ^ fresh.keys())[:3]} ...)")
    return {
        k: shrink * v + perturb * fresh[k].to(v.dtype) if v.is_floating_point() else v for k, v in old.items()
    }
