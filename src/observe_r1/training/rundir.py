"""A run's output directory: one run at a time, and a record of what observe-r1 made in it.

- The lock: the main process holds `flock` on OUTPUT/.observe-r1.lock while it runs (two runs into one
  directory once both exited 0 with their metrics.jsonl interleaved). The kernel releases it when the
  process ends, however it ends: a run killed with SIGKILL leaves no stale lock to clear by hand. The file
  says who holds it (pid, host, since), which the refusal quotes. Where the filesystem has no locks (some
  network mounts), the run says so and goes on unlocked.
- The record, OUTPUT/.observe-r1-run.json: which of the names a run writes (`RUN_OUTPUTS`) observe-r1 created
  itself. `checkpoint.overwrite` deletes only those, and in checkpoints/ only what a manifest marks as a
  checkpoint; whatever another tool wrote there is kept and named.
Imports nothing of observe_r1.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

LOCK = ".observe-r1.lock"
RECORD = ".observe-r1-run.json"
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "rollouts", "tensorboard")  # what `overwrite` may clear
_held: dict[Path, IO[str]] = {}  # the output directories this process holds, and their open lock files


class OutputDirBusy(RuntimeError):
    """Another run is writing into this output directory."""


def claim(out: Path) -> None:
    """Hold `out` for this process (again, if it holds it already), and record what in it is ours: the
    names of `RUN_OUTPUTS` that do not exist yet will be made by this run. Raises OutputDirBusy naming the
    run that holds it."""
    out = out.resolve()
    if out in _held:
        return
    out.mkdir(parents=True, exist_ok=True)
    f = (out / LOCK).open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise OutputDirBusy(
            f"{out} is in use by another run ({holder}); wait for it to end, or choose another "
            "logging.output_dir"
        ) from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        log.warning(
            "%s: this filesystem has no file locks (%s); two runs into it would not be stopped", out, e
        )
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    _held[out] = f
    record = out / RECORD
    owned = set(owned_outputs(out)) | {name for name in RUN_OUTPUTS if not (out / name).exists()}
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"owned": sorted(owned)}) + "\n")
    os.replace(tmp, record)


def release(out: Path) -> None:
    """Let `out` go (the end of a run; a process that ends lets go anyway)."""
    f = _held.pop(out.resolve(), None)
    if f is not None:
        f.close()


def owned_outputs(out: Path) -> list[str]:
    """The names of `RUN_OUTPUTS` that observe-r1 created in `out` (its record; none without one)."""
    try:
        owned = json.loads((out / RECORD).read_text()).get("owned", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in owned if name in RUN_OUTPUTS]


def clear_previous_run(out: Path, is_checkpoint) -> list[str]:
    """Delete a previous run's outputs: the names of `RUN_OUTPUTS` observe-r1 created, and inside checkpoints/
    only the folders `is_checkpoint` accepts (and unfinished `.tmp-*` / `.old-*` ones). Returns what was kept
    because observe-r1 did not make it (relative to `out`)."""
    owned, kept = set(owned_outputs(out)), []
    for name in RUN_OUTPUTS:
        path = out / name
        if not path.exists():
            continue
        if name not in owned:
            kept.append(name)
        elif name == "checkpoints":
            for child in path.iterdir():
                if child.is_dir() and (child.name.startswith((".tmp-", ".old-")) or is_checkpoint(child)):
                    shutil.rmtree(child)
                else:
                    kept.append(f"{name}/{child.name}")
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return kept
