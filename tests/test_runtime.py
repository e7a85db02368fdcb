"""The run's runtime: precision contexts."""

import torch

from observe_r1.training.runtime import autocast


def test_bf16_on_cpu_covers_the_training_passes_not_generation():
    cpu = torch.device("cpu")
    with autocast(cpu, "bfloat16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast(cpu, "bfloat16", generation=True):  # HF generate under CPU autocast is about 2x slower
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, "auto"):  # fp32 on CPU unless asked
        assert not torch.is_autocast_enabled("cpu")
