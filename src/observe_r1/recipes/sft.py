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
from peft import PeftModel

from observe_r1.algos import aggregate
from observe_r1.config import Config
from observe_r1.data.dataset import Sample
from observe_r1.data.prompts import system_prompt
from observe_r1.data.transforms import transform_responses
from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import completion_logprobs
from observe_r1.rewards import Rewarder
from observe_r1.rollout.batch import chunks, sequence_inputs
from observe_r1.training import loop, runtime, setup, sharding
from observe_r1.training.evaluation import evaluate_on_main
from observe_r1.training.judges import sketches_by_judge
from observe_r1.training.parts import supervised_batches, trainee
from observe_r1.training.report import SFT_PANELS
from observe_r1.training.reward_models import with_model_terms
from observe_r1.training.scoring import reference_rollout

log = logging.getLogger(__name__)


def sft(cfg: Config, export: str | Path | None = None, given: setup.Inputs | None = None) -> Path:
    """Run SFT as configured (datasets and callbacks `given` from Python: observe_r1.recipes.api); with `export`,
    also write the final model there (bf16, HF format)."""
    given = with_model_terms(cfg, given or setup.Inputs())
    # the evaluation's reward terms: plug-ins are checked before anything is written
    Rewarder.from_config(cfg.reward, given.rewards)
    acc = runtime.make_accelerator()
    cfg = setup.prepare_inputs(cfg, acc, given)
    runtime.seed_everything(cfg.seed)
    encoder = setup.load_encoder(cfg)
    samples, test = setup.load_data(cfg, encoder, given)
    samples = with_responses(samples, cfg.sft.response_column)
    if cfg.sft.sketch == "judge":  # SketchThinker's rewriting by a model, once (OUTPUT/sketches.jsonl)
        out = Path(cfg.logging.output_dir)
        samples = sketches_by_judge(cfg, acc, samples, cfg.sft.response_column, out / "sketches.jsonl")
    samples = transform_responses(
        samples,
        cfg.sft.response_column,
        cfg.sft.thought_dropout,
        cfg.sft.difficulty_cue,
        cfg.seed,
        sketch=cfg.sft.sketch == "rules",
    )
    o, world = cfg.optim, acc.num_processes
    mini, steps = supervised_batches(cfg, world, len(samples))

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
        whole = copy.deepcopy(model)
        whole = whole.merge_and_unload() if isinstance(whole, PeftModel) else whole  # LoRA: merged
        whole.to(dtype).save_pretrained(out, safe_serialization=True)
    else:
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
        model.save_pretrained(out, safe_serialization=True, state_dict=weights)
    encoder.save_pretrained(out)
    return out
