"""What every training loop does after its step body and at the end: count the step, evaluate when due, log,
keep the best checkpoint, save when due; then the final evaluation, the merged export, closing the logs.
Each recipe keeps its own step body inline. Imports config and the training modules."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from accelerate import Accelerator

from observe_r1.config import Config
from observe_r1.training.checkpoint import Checkpointer, RunState, checkpoint_dirs
from observe_r1.training.report import Panel, write_report
from observe_r1.training.runtime import all_processes
from observe_r1.training.tracking import Tracker

log = logging.getLogger(__name__)

Evaluate = Callable[[], dict[str, float]]  # the periodic evaluation (main process; the others get {})
# Called at the end of every step with the step and its metrics as logged; returning True stops the run.
Callback = Callable[[int, dict[str, float]], "bool | None"]


def end_of_step(cfg: Config, run: RunState, metrics: dict[str, float], tracker: Tracker | None,
                checkpointer: Checkpointer, evaluate: Evaluate | None, steps: int) -> dict[str, float]:  # fmt: skip
    """Step `run.step` is done: count it, evaluate every `logging.eval_every` steps, log, keep the best, and
    checkpoint every `checkpoint.every` steps and at the last one. Returns the metrics as logged."""
    step = run.step
    run.step += 1
    evaluation = None
    if evaluate is not None and cfg.logging.eval_every and run.step % cfg.logging.eval_every == 0:
        evaluation = evaluate()
        metrics = metrics | evaluation
    if tracker is not None:
        tracker.log(step, metrics)
        run.history = tracker.history
    if evaluation is not None:  # after the log, so the best checkpoint's history has this step
        checkpointer.keep_best(run, evaluation)
    if run.step % cfg.checkpoint.every == 0 or run.step == steps:
        checkpointer.save(run)
    return metrics


class Listener(Protocol):
    """Who hears the end of every step (training.setup.Inputs): its callbacks, and whether they stopped it."""

    callbacks: list[Callback]
    stopped: bool


def stop_requested(acc: Accelerator, listener: Listener, step: int, metrics: dict[str, float], run: RunState,
                   checkpointer: Checkpointer) -> bool:  # fmt: skip
    """Call the step-end callbacks (on every process). If any returns True on any process, the run stops
    after this step, with a checkpoint of it (resume continues from there), and `listener.stopped` says so
    (a staged run then stops too)."""
    callbacks = listener.callbacks
    stop = any([bool(callback(step, metrics)) for callback in callbacks])  # a list: every callback is called
    if callbacks and acc.num_processes > 1:
        stop = not all_processes(acc, not stop)
    if stop and checkpointer.saved_step != run.step:
        checkpointer.save(run)
    listener.stopped = listener.stopped or stop
    return stop


def finish(cfg: Config, acc: Accelerator, run: RunState, tracker: Tracker | None, checkpointer: Checkpointer,
           evaluate: Evaluate | None, title: str, panels: Sequence[Panel]) -> None:  # fmt: skip
    """The final evaluation (unless the last step had one), the merged LoRA export, closing the logs, and
    OUTPUT/report.md with the training curves (`title`, one plot per panel)."""
    if evaluate is not None and (not cfg.logging.eval_every or run.step % cfg.logging.eval_every):
        final = evaluate()
        if tracker is not None:
            tracker.log(run.step, final)
        checkpointer.keep_best(run, final)
    checkpointer.export_merged()
    if tracker is not None:
        tracker.close()
        out = Path(cfg.logging.output_dir)
        found = [
            *checkpoint_dirs(out),
            *([out / "checkpoints" / "best"] if (out / "checkpoints" / "best").is_dir() else []),
        ]
        report = write_report(out, title, run.history, panels, [str(p) for p in found])
        log.info("report: %s", report)
    acc.wait_for_everyone()
