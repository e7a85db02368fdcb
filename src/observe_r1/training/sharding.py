"""Sharded training with PyTorch's FSDP2 (`parallel.strategy: fsdp`), and what the rest of the run needs to
work the same with a sharded model: full weights for generation and evaluation, full state dicts for
checkpoints and the vLLM engine, and the optimiser state. With `ddp` every function here is the plain
operation on the whole model. Imports config.

FSDP2 (`torch.distributed.fsdp.fully_shard`) puts one unit around each decoder layer and each vision block
(transformers' `_no_split_modules`) and one around the rest; each process keeps 1/N of every parameter, of its
gradient and of AdamW's moments, and all-gathers a unit's parameters just before it runs. On GPU with bf16
compute, parameters are gathered in bf16 and gradients reduced in fp32 (the fp32 master copy stays sharded);
`parallel.offload` keeps the shards in CPU memory between uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)
from torch.distributed.tensor import DTensor

from observe_r1.config import Config


def shard(model: torch.nn.Module, cfg: Config, compute_dtype: torch.dtype | None) -> torch.nn.Module:
    """FSDP2 units around every decoder layer and vision block, then the root. In place; returns the model."""
    kinds = set(getattr(_inner(model), "_no_split_modules", None) or [])
    if not kinds:
        raise ValueError(f"{type(_inner(model)).__name__} names no layers to shard (_no_split_modules)")
    options: dict[str, Any] = {}
    if compute_dtype is not None:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    if cfg.parallel.offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for module in list(model.modules()):
        if type(module).__name__ in kinds:
            fully_shard(module, **options)
    root = _inner(model)  # inside a peft wrapper: the image encoder is called on it directly
    fully_shard(root, **options)
    for method in ("get_image_features", "get_video_features"):  # encoded before the forward pass, once each
        if hasattr(root, method):
            register_fsdp_forward_method(root, method)
    return model


def _inner(model: Any) -> Any:
    """The transformers model inside a peft wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(_inner(model), FSDPModule)


@contextlib.contextmanager
def gathered(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The full parameters on every process for the duration (one all-gather per unit), for `generate`
    and evaluation: no collective runs inside, so processes may run different numbers of decode steps or
    only one of them may run. All processes must enter it together."""
    if not is_sharded(model):
        yield model
        return
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True)


def reshard(model: torch.nn.Module) -> None:
    """Free the gathered weights a forward pass without backward leaves behind (FSDP2 keeps the root unit
    gathered after its forward, for the backward that follows in training)."""
    if is_sharded(model):
        for unit in model.modules():
            if isinstance(unit, FSDPModule):
                unit.reshard()


def full_state_dict(model: torch.nn.Module, everywhere: bool = False) -> dict[str, Any]:
    """The model's full state dict: with FSDP gathered (collective: all processes call it) into CPU memory
    on the main process only (empty elsewhere), or on every process's device with `everywhere` (a
    colocated vLLM engine per process)."""
    if not is_sharded(model):
        return model.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=not everywhere)
    state = get_model_state_dict(model, options=options)
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):  # tied weights (lm_head): saved once
        if id(p) in seen:
            state.pop(name, None)
        seen.add(id(p))
    return state


def load_full_state_dict(model: torch.nn.Module, weights: dict[str, Any], strict: bool = True) -> None:
    """Full weights (every process has them) into the model, each process keeping its shard."""
    if is_sharded(model):
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=strict))
    else:
        model.load_state_dict(weights, strict=strict)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's state to checkpoint. With FSDP: the full state, keyed by parameter name, gathered
    on the main process (collective), so the checkpoint does not depend on the sharding."""
    if not is_sharded(model):
        return optimizer.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=options)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded tensor (the tensor itself when not sharded)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def total(value: int, device: torch.device) -> int:
    """A count summed over the processes of a sharded model (each holds a different part)."""
    if not dist.is_available() or not dist.is_initialized():
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t)
    return int(t.item())
