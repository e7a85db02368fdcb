"""Cold-start supervised fine-tuning: `observe-r1 sft CONFIG`.

Teaches the output layout (and some skill) from reference responses before RL, as in "cold start then RL".
The loss is the token-mean negative log-likelihood of the response tokens only (the end token included),
normalised over each mini-batch as the GRPO loss is. Everything else is the GRPO run's machinery: the
reference responses are packed into a `Rollout`, so the same code builds the sequences and computes the
log-probs, and the same config, data loading, checkpoints, exact resume, several processes and
evaluation apply. The response is tokenised after the prompt's generation header, exactly the tokens the
policy will later generate, so SFT and RL see the same sequences.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch

from observe_r1.algos import aggregate
from observe_r1.config import Config
from observe_r1.data.dataset import Sample
from observe_r1.data.prompts import system_prompt, with_system_prompt
from observe_r1.data.transforms import transform_responses
from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import completion_logprobs
from observe_r1.rewards import Rewarder
from observe_r1.rollout.base import Rollout
from observe_r1.rollout.batch import chunks, sequence_inputs
from observe_r1.rollout.multiturn import reference_tokens
from observe_r1.training import loop, runtime, setup, sharding
from observe_r1.training.evaluation import evaluate_on_main
from observe_r1.training.parts import trainee
from observe_r1.training.report import SFT_PANELS
from observe_r1.training.scoring import encode_prompts

log = logging.getLogger(__name__)


def sft(cfg: Config, export: str | Path | None = None, given: setup.Inputs | None = None) -> Path:
    """Run SFT as configured (datasets and callbacks `given` from Python: observe_r1.recipes.api); with `export`,
    also write the final model there (bf16, HF format)."""
    given = given or setup.Inputs()
    # the evaluation's reward terms: plug-ins are checked before anything is written
    Rewarder.from_config(cfg.reward, given.rewards)
    acc = runtime.make_accelerator()
    cfg = setup.prepare_inputs(cfg, acc, given)
    runtime.seed_everything(cfg.seed)
    encoder = setup.load_encoder(cfg)
    samples, test = setup.load_data(cfg, encoder, given)
    samples = with_responses(samples, cfg.sft.response_column)
    samples = transform_responses(samples, cfg.sft.response_column, cfg.sft.thought_dropout, cfg.sft.difficulty_cue,
                                  cfg.seed)  # fmt: skip
    o, world = cfg.optim, acc.num_processes
    if o.mini_batch_size % world or (o.mini_batch_size // world) % o.micro_batch_size:
        raise ValueError(
            f"optim.mini_batch_size={o.mini_batch_size} must split into {world} process(es) x micro-batches"
        )
    mini = o.mini_batch_size // world
    steps = o.max_steps or max(1, o.epochs * len(samples) // o.mini_batch_size)

    policy, optimizer, scheduler, sampler, checkpointer, run, tracker, params = trainee(cfg, acc, encoder, samples,
                                                                                       steps)  # fmt: skip
    system = system_prompt(cfg.data.system_prompt)
    amp = runtime.autocast(acc.device, cfg.model.dtype)

    def evaluate() -> dict[str, float]:
        return evaluate_on_main(cfg, acc, policy, encoder, test, system, given.rewards)

    log.info("SFT: %d optimiser steps x %d samples on %d process(es)", steps, o.mini_batch_size, world)
    with runtime.progress(acc, steps, run.step, "SFT") as bar, loop.interruptible():
        while run.step < steps:
            started = time.perf_counter()
            start = mini * acc.process_index
            batch = [samples[i] for i in sampler.next(o.mini_batch_size)[start : start + mini]]
            rollout = reference_rollout(batch, encoder, system, cfg.sft.response_column, observations(cfg))
            micros = chunks(range(mini), o.micro_batch_size)
            mask = rollout.model_mask.to(acc.device, torch.float32)
            denominator = runtime.global_denominator(acc, [mask[m] for m in micros], "token_mean", 0)
            total = 0.0
            for k, idx in enumerate(micros):
                with acc.no_sync(policy) if k < len(micros) - 1 else contextlib.nullcontext(), amp:
                    logp, _ = completion_logprobs(
                        policy, sequence_inputs(rollout, idx, encoder), packed=cfg.model.packing
                    )
                    loss = aggregate(-logp, mask[idx, : logp.shape[1]], "token_mean", denominator)
                    acc.backward(loss * world)
                total += float(loss.detach())
            grad_norm = runtime.optimizer_step(acc, params, optimizer, scheduler, cfg, run)
            metrics = {
                "sft/loss": total,
                "sft/response_tokens": float(mask.sum()),
                "actor/grad_norm": grad_norm,
                "optim/lr": scheduler.get_last_lr()[0],
                "perf/step_s": time.perf_counter() - started,
            }
            metrics = runtime.mean_across_processes(metrics, acc)
            step = run.step
            metrics = loop.end_of_step(
                cfg, run, metrics, tracker, checkpointer, evaluate if test else None, steps
            )
            bar(step, metrics)
            if loop.stop_requested(acc, given, step, metrics, run, checkpointer):
                break
    loop.finish(cfg, acc, run, tracker, checkpointer, evaluate if test else None, "SFT run", SFT_PANELS)
    if export is not None:
        export_trained(acc, policy, encoder, Path(export))
    acc.wait_for_everyone()
    return Path(cfg.logging.output_dir)


def export_trained(acc: Any, policy: torch.nn.Module, encoder: ChatEncoder, out: Path) -> Path:
    """The trained policy written to `out` (`export_model`): a sharded one is gathered on every process, the
    main process writes it, the others wait."""
    model = acc.unwrap_model(policy)
    weights = sharding.full_state_dict(model) if sharding.is_sharded(model) else None  # all processes
    if acc.is_main_process:
        export_model(model, encoder, out, weights=weights)
    acc.wait_for_everyone()
    return out


def with_responses(samples: list[Sample], column: str) -> list[Sample]:
    """Samples that have a non-empty reference response; the others are skipped with a count."""
    kept = [s for s in samples if isinstance(s.metadata.get(column), str) and s.metadata[column].strip()]
    if len(kept) < len(samples):
        log.warning(
            "SFT: %d of %d samples have no `%s` column and are skipped",
            len(samples) - len(kept),
            len(samples),
            column,
        )
    if not kept:
        raise ValueError(f"no sample has a reference response in column `{column}` (sft.response_column)")
    return kept


def observations(cfg: Config) -> bool:
    """Whether reference responses hold tool observations (`<output>` blocks of the code layout): no loss."""
    return cfg.rollout.multi_turn.enabled and cfg.rollout.multi_turn.layout == "code"


def reference_rollout(samples: list[Sample], encoder: ChatEncoder, system: str, column: str,
                      observations: bool = False) -> Rollout:  # fmt: skip
    """The reference responses as a Rollout: one 'response' per prompt, ending with the end token. With
    `observations`, its `<output>` blocks are tool observations: in the sequence, out of the loss."""
    samples = list(samples)  # a prompt that fails to encode is replaced by the previous good one, here too
    prompts, _, _, _ = encode_prompts(
        samples, [with_system_prompt(s.messages, system) for s in samples], encoder
    )
    eos = encoder.tokenizer.eos_token_id
    pieces = [reference_tokens(s.metadata[column], encoder, observations) for s in samples]
    width = max(len(x) for x, _ in pieces) + 1
    completion = torch.full((len(pieces), width), encoder.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(pieces), width), dtype=torch.long)
    loss_mask = torch.zeros((len(pieces), width), dtype=torch.long)
    for i, (x, m) in enumerate(pieces):
        completion[i, : len(x) + 1] = torch.tensor(x + [eos])
        mask[i, : len(x) + 1] = 1
        loss_mask[i, : len(x) + 1] = torch.tensor(m + [1])
    return Rollout(
        prompts=prompts,
        prompt_index=list(range(len(samples))),
        group_ids=list(range(len(samples))),
        completion_ids=completion,
        completion_mask=mask,
        lengths=mask.sum(1),
        truncated=torch.zeros(len(pieces), dtype=torch.bool),
        texts=[s.metadata[column] for s in samples],
        loss_mask=loss_mask if observations else None,
    )


def export_model(
    model: Any,
    encoder: ChatEncoder,
    out: Path,
    dtype: torch.dtype = torch.bfloat16,
    weights: dict | None = None,
) -> Path:
    """Write the model in `dtype` (bf16 halves the size of a shipped checkpoint) with its tokenizer and
    image processor; `from_pretrained(..., dtype=torch.float32)` reads it back for training. `weights`: the
    full state dict of a sharded model."""
    if weights is None:
        copy.deepcopy(model).to(dtype).save_pretrained(out, safe_serialization=True)
    else:
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
        model.save_pretrained(out, safe_serialization=True, state_dict=weights)
    encoder.save_pretrained(out)
    return out
