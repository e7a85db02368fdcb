"""Rejection-sampling fine-tuning (Imitate, Explore, Self-Improve; START's fine-tuning step): `observe-r1 rft
CONFIG`, or an `rft` stage.

For each of `rft.rounds` rounds: the current model answers every training prompt `rollout.n` times; the
correct responses are kept (`rft.keep`: the shortest per prompt, or all of them); the SFT recipe fine-tunes
the current model on them for `optim.max_steps` steps (OUTPUT/round-K, evaluated on `data.test`); its model
starts the next round. OUTPUT/rounds.jsonl and OUTPUT/report.md give each round's sampled accuracy (the share
of correct responses before its fine-tuning), the responses kept and the evaluation after it. A finished
round is skipped when the run is started again. Sampling runs on one process.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from observe_r1.config import Config, with_overrides
from observe_r1.data.dataset import to_native_row
from observe_r1.data.prompts import system_prompt
from observe_r1.recipes.sft import sft
from observe_r1.training import setup
from observe_r1.training.parts import sample_responses, start_sampling
from observe_r1.training.report import Panel, write_report
from observe_r1.training.scoring import ScoredRollout

log = logging.getLogger(__name__)

RFT_PANELS: tuple[Panel, ...] = (
    ("rft/sampled_accuracy", "sampled accuracy (before the round's fine-tuning)", ()),
    ("rft/kept", "responses kept", ()),
    ("eval/accuracy", "accuracy after the round (evaluation)", ()),
)


def kept_rows(
    scored: list[ScoredRollout], keep: str, image_dir: Path, require_tool: bool = False
) -> list[dict]:
    """Native rows of the correct responses (the shortest per prompt, or all), the response in `rft_response`;
    with `require_tool`, only those that called a tool and got a result (START's hint-RFT). A multi-turn
    response is kept whole: its hints are fine-tuned on (the model learns to write them), its `<output>` blocks
    are observations the SFT recipe masks."""
    rows = []
    for got in scored:
        n = len(got.rollout.texts) // len(got.samples)
        traces = got.rollout.traces or []
        used = [any(not c.error for c in t.calls) for t in traces] or [False] * len(got.rollout.texts)
        for g, sample in enumerate(got.samples):
            right = [
                i
                for i in range(g * n, (g + 1) * n)
                if got.result.correct[i] and (used[i] or not require_tool)
            ]
            if keep == "shortest" and right:
                right = [min(right, key=lambda i: int(got.rollout.model_lengths[i]))]
            for j, i in enumerate(right):
                rows.append(
                    to_native_row(sample, image_dir)
                    | {"id": f"{sample.id}#{j}", "rft_response": got.rollout.texts[i]}
                )
    return rows


def rft(cfg: Config, given: setup.Inputs | None = None) -> Path:
    """Run the rounds; returns the folder of the last round's model."""
    given = given or setup.Inputs()
    start = start_sampling(cfg, given, "rft")
    cfg, samples, rewarder = start.cfg, start.train, start.rewarder
    out, model, system = Path(cfg.logging.output_dir), cfg.model.path, system_prompt(cfg.data.system_prompt)
    if cfg.rollout.multi_turn.enabled and cfg.rollout.multi_turn.layout != "code":
        raise ValueError("rft with multi-turn rollouts fine-tunes on the trajectories' text: use "
                         "rollout.multi_turn.layout=code (the chat layout's tool turns are not text)")  # fmt: skip
    history = []
    for k in range(cfg.rft.rounds):
        folder = out / f"round-{k}"
        record = folder / "round.json"
        if not record.is_file():
            scored = sample_responses(cfg, model, samples, rewarder, cfg.rollout.n, system)
            rows = kept_rows(scored, cfg.rft.keep, folder / "images", cfg.rft.require_tool)
            accuracy = sum(float(got.result.correct.float().sum()) for got in scored) / (
                len(samples) * cfg.rollout.n
            )
            tools = tool_rates([got.rollout for got in scored])
            log.info("rft round %d: sampled accuracy %.3f, %d responses kept", k, accuracy, len(rows))
            if not rows:
                raise ValueError(f"rft round {k}: no correct response{' that used a tool' if cfg.rft.require_tool else ''} "
                                 f"among {len(samples)} x {cfg.rollout.n}: the model must answer some (start from a "
                                 "cold start), or raise rollout.n")  # fmt: skip
            round_cfg = with_overrides(cfg, [f"model.path={model}", f"logging.output_dir={folder}",
                                             "sft.response_column=rft_response"])  # fmt: skip
            inner = setup.Inputs(rows, given.test, given.rewards, given.callbacks)
            sft(round_cfg, export=folder / "model", given=inner)
            if inner.stopped:  # a callback stopped the round: resumed by the next run
                given.stopped = True
                return Path(model)
            evaluation = _final_evaluation(folder)
            entry = {"step": k, "rft/sampled_accuracy": accuracy, "rft/kept": len(rows), **tools, **evaluation,
                     "model": str(folder / "model")}  # fmt: skip
            tmp = record.with_suffix(".tmp")
            tmp.write_text(json.dumps(entry))
            os.replace(tmp, record)
        entry = json.loads(record.read_text())
        history.append(entry)
        model = entry["model"]
    (out / "rounds.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    write_report(out, "Rejection-sampling fine-tuning", history, RFT_PANELS, [h["model"] for h in history])
    rewarder.close()
    return Path(model)


def tool_rates(rollouts: list) -> dict[str, float]:
    """Multi-turn sampling: the share of responses that called a tool, and hints per response."""
    traces = [t for r in rollouts if r.traces is not None for t in r.traces]
    if not traces:
        return {}
    return {"rft/tool_used_rate": sum(bool(t.calls) for t in traces) / len(traces),
            "rft/hints_per_response": sum(t.hints for t in traces) / len(traces)}  # fmt: skip


def _final_evaluation(folder: Path) -> dict[str, float]:
    """The `eval/*` metrics of the last evaluation of an SFT run (empty without data.test)."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    last: dict = next((r for r in reversed(rows) if any(k.startswith("eval/") for k in r)), {})
    return {k: v for k, v in last.items() if k.startswith("eval/")}
