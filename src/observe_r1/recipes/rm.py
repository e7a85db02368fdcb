"""A Bradley-Terry reward model: `observe-r1 rm CONFIG`.

The model of `model.path` (a causal LM or a VLM, LoRA or full) gets a score head (`add_score_head`) and learns
to score each pair's chosen response above its rejected one: the loss is -log sigmoid(r_c - r_r) per pair
(algos.bradley_terry_loss, + `sft.rm_center_coef` x (r_c + r_r)^2), averaged over `optim.mini_batch_size`
pairs per optimiser step, micro-batches of `optim.micro_batch_size` pairs. The pairs are rows of `data.train`
in TRL's preference layouts (observe_r1.data.preference: a prompt, with images, and `chosen` / `rejected`),
encoded like SFT's reference responses (after the prompt's generation header, ending with the end token);
the score is the head's on the end token. `data.test`'s pairs give the held-out pairwise accuracy
(`eval/pair_accuracy`, every `logging.eval_every` steps and at the end). Checkpoints, exact resume, several
processes (DDP, FSDP) and the report are the other recipes'. The final model is written to OUTPUT/model: a
text model's folder loads with `AutoModelForSequenceClassification` (num_labels 1), any with
`observe_r1.models.policy.load_model`; the `reward_model` reward term reads it (docs/rewards.md).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from observe_r1.algos import bradley_terry_loss
from observe_r1.config import Config
from observe_r1.data.dataset import Sample
from observe_r1.data.prompts import system_prompt, with_system_prompt
from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import sequence_scores
from observe_r1.recipes.sft import export_trained
from observe_r1.rollout.batch import chunks, sequence_inputs
from observe_r1.training import loop, runtime, setup, sharding
from observe_r1.training.parts import supervised_batches, trainee
from observe_r1.training.report import Panel
from observe_r1.training.reward_models import score_responses
from observe_r1.training.scoring import encode_prompts, reference_rollout

log = logging.getLogger(__name__)

RM_PANELS: tuple[Panel, ...] = (
    ("rm/loss", "Bradley-Terry loss", ()),
    ("rm/accuracy", "chosen scored higher (share of pairs)", (("eval/pair_accuracy", "held out"),)),
    ("rm/margin", "score margin, chosen - rejected", (("eval/margin", "held out"),)),
    ("actor/grad_norm", "gradient norm", ()),
)


def pairs_of(samples: list[Sample], split: str) -> list[Sample]:
    """The samples that are preference pairs (string `chosen` and `rejected`); the others skipped, counted."""
    kept = [
        s
        for s in samples
        if isinstance(s.metadata.get("chosen"), str) and isinstance(s.metadata.get("rejected"), str)
    ]
    if len(kept) < len(samples):
        skipped = len(samples) - len(kept)
        log.warning(
            "rm: %d of %d %s rows are not preference pairs (chosen, rejected): skipped",
            skipped,
            len(samples),
            split,
        )
    return kept


def rm(cfg: Config, given: setup.Inputs | None = None) -> Path:
    """Train the reward model as configured; returns the folder of the exported model (OUTPUT/model)."""
    given = given or setup.Inputs()
    acc = runtime.make_accelerator()
    cfg = setup.prepare_inputs(cfg, acc, given)
    runtime.seed_everything(cfg.seed)
    encoder = setup.load_encoder(cfg)
    train, test = setup.load_data(cfg, encoder, given)
    pairs, test = pairs_of(train, "train"), pairs_of(test, "test")
    if not pairs:
        raise ValueError(
            "rm: no row of data.train is a preference pair: each needs a prompt (or an implicit one) and "
            "`chosen` / `rejected` responses (TRL's preference layouts, docs/data.md)"
        )
    o, world = cfg.optim, acc.num_processes
    mini, steps = supervised_batches(cfg, world, len(pairs))
    policy, optimizer, scheduler, sampler, checkpointer, run, tracker, params = trainee(
        cfg, acc, encoder, pairs, steps, score_head=True
    )
    model_config = acc.unwrap_model(policy).config
    model_config.pad_token_id = encoder.pad_token_id  # *ForSequenceClassification pools by it
    system = system_prompt(cfg.data.system_prompt)
    amp = runtime.autocast(acc.device, cfg.model.dtype)

    def evaluate() -> dict[str, float]:
        return pair_accuracy(cfg, acc, policy, encoder, test, system)

    counts = (steps, o.mini_batch_size, world, len(pairs), len(test))
    log.info("RM: %d optimiser steps x %d pairs on %d process(es) (%d training pairs, %d held out)", *counts)
    with runtime.progress(acc, steps, run.step, "RM") as bar, loop.interruptible():
        while run.step < steps:
            started, step = time.perf_counter(), run.step
            start = mini * acc.process_index
            batch = [pairs[i] for i in sampler.next(o.mini_batch_size)[start : start + mini]]
            good = reference_rollout(batch, encoder, system, "chosen")
            bad = reference_rollout(batch, encoder, system, "rejected")
            micros = chunks(range(mini), o.micro_batch_size)
            stats = dict.fromkeys(("rm/loss", "rm/accuracy", "rm/margin", "rm/chosen", "rm/rejected"), 0.0)
            for k, idx in enumerate(micros):
                with acc.no_sync(policy) if k < len(micros) - 1 else contextlib.nullcontext(), amp:
                    chosen = sequence_scores(policy, sequence_inputs(good, idx, encoder))
                    rejected = sequence_scores(policy, sequence_inputs(bad, idx, encoder))
                    pair_loss, margin = bradley_terry_loss(chosen, rejected, cfg.sft.rm_center_coef)
                    acc.backward(pair_loss.sum() / mini)  # processes average their gradients: the global mean
                stats["rm/loss"] += float(pair_loss.detach().sum()) / mini
                stats["rm/accuracy"] += float((margin > 0).float().sum()) / mini
                stats["rm/margin"] += float(margin.sum()) / mini
                stats["rm/chosen"] += float(chosen.detach().sum()) / mini
                stats["rm/rejected"] += float(rejected.detach().sum()) / mini
            stats["actor/grad_norm"] = runtime.optimizer_step(acc, params, optimizer, scheduler, cfg, run)
            stats |= {"optim/lr": scheduler.get_last_lr()[0], "perf/step_s": time.perf_counter() - started}
            metrics = runtime.mean_across_processes(stats, acc)
            metrics = loop.end_of_step(
                cfg, run, metrics, tracker, checkpointer, evaluate if test else None, steps
            )
            bar(step, metrics)
            if loop.stop_requested(acc, given, step, metrics, run, checkpointer):
                break
    loop.finish(
        cfg, acc, run, tracker, checkpointer, evaluate if test else None, "Reward model run", RM_PANELS
    )
    return export_trained(acc, policy, encoder, Path(cfg.logging.output_dir) / "model")


def pair_accuracy(
    cfg: Config,
    acc: Accelerator,
    model: torch.nn.Module,
    encoder: ChatEncoder,
    pairs: list[Sample],
    system: str,
) -> dict[str, float]:
    """`eval/pair_accuracy` (the share of held-out pairs whose chosen response scores higher) and `eval/margin`,
    on the main process (a sharded model is gathered first; the others wait)."""
    metrics: dict[str, float] = {}
    with sharding.gathered(acc.unwrap_model(model)) as full:
        if acc.is_main_process:
            was_training = full.training
            full.eval()
            prompts, _, _, _ = encode_prompts(
                pairs, [with_system_prompt(s.messages, system) for s in pairs], encoder
            )
            index = [*range(len(pairs)), *range(len(pairs))]
            texts = [s.metadata["chosen"] for s in pairs] + [s.metadata["rejected"] for s in pairs]
            scores = score_responses(
                full, encoder, prompts, index, texts, cfg.optim.micro_batch_size * 2, cfg.model.dtype
            )
            margins = torch.tensor(scores[: len(pairs)]) - torch.tensor(scores[len(pairs) :])
            metrics = {
                "eval/pair_accuracy": float((margins > 0).float().mean()),
                "eval/margin": float(margins.mean()),
            }
            full.train(was_training)
        acc.wait_for_everyone()
    return metrics
