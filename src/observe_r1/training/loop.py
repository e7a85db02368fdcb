"""What every training loop does after its step body and at the end: count the step, evaluate when due, log,
keep the best checkpoint, save when due; then the final evaluation, the merged export, closing the logs.
Each recipe keeps its own step body inline. Imports config and the training modules."""

from __future__ import annotations

from collections.abc import Callable

from accelerate import Accelerator

from observe_r1.config import Config
from observe_r1.training.checkpoint import Checkpointer, RunState
from observe_r1.training.tracking import Tracker

Evaluate = Callable[[], dict[str, float]]  # the periodic evaluation (main process; the others get {})


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


def finish(cfg: Config, acc: Accelerator, run: RunState, tracker: Tracker | None, checkpointer: Checkpointer,
           evaluate: Evaluate | None) -> None:  # fmt: skip
    """The final evaluation (unless the last step had one), the merged LoRA export, closing the logs."""
    if evaluate is not None and (not cfg.logging.eval_every or run.step % cfg.logging.eval_every):
        final = evaluate()
        if tracker is not None:
            tracker.log(run.step, final)
        checkpointer.keep_best(run, final)
    checkpointer.export_merged()
    if tracker is not None:
        tracker.close()
    acc.wait_for_everyone()
