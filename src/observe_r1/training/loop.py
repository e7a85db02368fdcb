"""What every training loop does after its step body and at the end: count the step, evaluate when due, log,
keep the best checkpoint, save when due; then the final evaluation, the merged export, closing the logs.
Each recipe keeps its own step body inline. Imports config and the training modules.

Stopping on a signal: inside `interruptible()` (the loop), SIGTERM (a preemption, `scancel`, torchrun passing
one on) and SIGINT (Ctrl-C) are noted instead of killing the run: the step in progress finishes, a checkpoint
of it is written, the logs are closed, and the run ends with `RunInterrupted` (the command line prints one line
and exits 128 + the signal's number); the same command resumes it. A second Ctrl-C stops at once, without that
checkpoint. A step must fit in the scheduler's grace period (SLURM's KillWait, torchrun's 30 s ...)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from accelerate import Accelerator

from observe_r1.config import Config
from observe_r1.training import rundir
from observe_r1.training.checkpoint import Checkpointer, RunState, checkpoint_dirs, latest_checkpoint
from observe_r1.training.report import Panel, write_report
from observe_r1.training.runtime import all_processes
from observe_r1.training.tracking import Tracker

log = logging.getLogger(__name__)

_received: list[int] = []  # the signals noted while a loop runs (`interruptible`)


class RunInterrupted(KeyboardInterrupt):
    """The run stopped on SIGTERM or SIGINT after a checkpoint of its last step (resume: the same command)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after step {step}; checkpoint {checkpoint}: run the same command to resume"
        )


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While a training loop runs: note SIGTERM / SIGINT (module docstring); a second SIGINT raises
    KeyboardInterrupt at once. Outside the main thread nothing changes (Python delivers signals there only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, frame: object) -> None:
        if signum == signal.SIGINT and signal.SIGINT in _received:
            raise KeyboardInterrupt
        if not _received:
            log.warning(
                "%s: the run stops after this step, with a checkpoint (Ctrl-C again: at once, without it)",
                signal.Signals(signum).name,
            )
        _received.append(signum)

    _received.clear()
    previous = {s: signal.signal(s, note) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
    """Call the step-end callbacks (on every process). If any returns True on any process, or a signal came
    (`interruptible`), the run stops after this step, with a checkpoint of it (resume continues from there),
    and `listener.stopped` says so (a staged run then stops too)."""
    callbacks = listener.callbacks
    stop = any([bool(callback(step, metrics)) for callback in callbacks])  # a list: every callback is called
    stop = stop or bool(_received)
    if acc.num_processes > 1:  # a signal may reach some processes only
        stop = not all_processes(acc, not stop)
    if stop and checkpointer.saved_step != run.step:
        checkpointer.save(run)
    listener.stopped = listener.stopped or stop
    return stop


def finish(cfg: Config, acc: Accelerator, run: RunState, tracker: Tracker | None, checkpointer: Checkpointer,
           evaluate: Evaluate | None, title: str, panels: Sequence[Panel]) -> None:  # fmt: skip
    """The final evaluation (unless the last step had one), the merged LoRA export, closing the logs, and
    OUTPUT/report.md with the training curves (`title`, one plot per panel). After a signal, only the logs and
    the report, then RunInterrupted."""
    interrupted = bool(_received)
    if acc.num_processes > 1:
        interrupted = not all_processes(acc, not interrupted)
    if interrupted:
        evaluate = None
        cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, merge_lora=False))
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
    if acc.is_main_process:
        rundir.release(Path(cfg.logging.output_dir))
    if interrupted:
        raise RunInterrupted(
            _received[0] if _received else signal.SIGTERM, run.step, latest_checkpoint(cfg.logging.output_dir)
        )
