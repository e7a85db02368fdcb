"""Run Python that the policy wrote, never in the trainer's process: one supervised process per call.

Each call starts `supervise.py` (standard library only, `python -I -S`), which runs the code with resource
limits in a fresh directory and kills everything it started before it answers (its docstring has the
steps). Two isolation levels (`tools.sandbox`), docs/tools.md says what each prevents:
  bwrap    bubblewrap: new user, PID, IPC, UTS, network and mount namespaces; the code sees /usr, the Python
           installation and its own directory (read-only except its directory and a size-capped /tmp), not
           /etc, /home, /root or the run's output directory.
  process  a plain child process: no network (a network namespace where the kernel allows it), its own
           session, rlimits; as root it runs as `nobody` (cannot write or signal what root owns) but can read
           world-readable files; as another user it is that user: a resource fence, not a security boundary.
`auto` takes bwrap when it is installed and works, else process, and logs which (once).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

SUPERVISOR = Path(__file__).with_name("supervise.py")
Mode = Literal["auto", "bwrap", "process"]


@dataclass(frozen=True)
class Limits:
    cpu_s: float = 5.0  # CPU seconds of the code (RLIMIT_CPU)
    wall_s: float = 10.0  # wall-clock seconds before everything is killed
    memory_mb: int = 1024  # address space per process (RLIMIT_AS)
    file_mb: int = 16  # largest file it may write (RLIMIT_FSIZE)
    disk_mb: int = 64  # bytes it may leave in its directory (and bwrap's /tmp)
    max_processes: int = 16  # processes alive at once, the code included
    max_output: int = 65536  # bytes of stdout and of stderr kept (the rest is counted and dropped)


@dataclass
class RunResult:
    """What one call did. `status`: ok, timeout, cpu_limit, file_too_large, too_many_processes, disk_full,
    killed (a signal), error (the sandbox itself failed)."""

    status: str
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    signal: str | None = None
    output_dropped_bytes: int = 0
    killed: int = 0  # processes killed at the end (the code's leftovers included)
    seconds: float = 0.0
    isolation: dict = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.exit_code == 0


class PythonSandbox:
    """Runs code with `python` (default: this interpreter) under `limits`, isolated as `mode`."""

    def __init__(self, mode: Mode = "auto", limits: Limits | None = None, python: str = "",
                 hide: tuple[str, ...] = ()):  # fmt: skip
        self.limits = limits or Limits()
        self.mode = resolve_mode(mode)
        self.python, self.as_nobody = interpreter(python or sys.executable, self.mode)
        # process isolation as root covers these (and the working directory, /root, /home) unless the
        # interpreter lives there
        prefix = os.path.realpath(shutil.which(self.python) or self.python)
        folders = {os.path.realpath(p) for p in (*hide, os.getcwd(), "/root", "/home")}
        self.hide = sorted(f for f in folders if not prefix.startswith(f + os.sep) and f != "/")

    def run(self, code: str) -> RunResult:
        job = {**asdict(self.limits), "code": code, "python": self.python, "mode": self.mode,
               "as_nobody": self.as_nobody, "binds": bind_paths(self.python), "hide": self.hide}  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(SUPERVISOR)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        try:  # the supervisor enforces wall_s itself; this bound only catches a supervisor that hangs
            out, err = proc.communicate(json.dumps(job).encode(), timeout=self.limits.wall_s + 30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return RunResult("error", error="the sandbox supervisor did not answer in time; killed")
        try:
            return RunResult(**json.loads(out.decode().strip().splitlines()[-1]))
        except (ValueError, IndexError, TypeError):
            tail = err.decode(errors="replace")[-500:]
            return RunResult("error", error=f"the sandbox supervisor failed (exit {proc.returncode}): {tail}")


@functools.cache
def resolve_mode(mode: Mode) -> Literal["bwrap", "process"]:
    """`auto`: bubblewrap when it is installed and can start a sandbox here, else plain processes; logged once."""
    if mode == "process":
        log.warning("python tool: process isolation (%s); docs/tools.md says what it does not prevent", who())
        return "process"
    works, why = bwrap_works()
    if mode == "bwrap" and not works:
        raise RuntimeError(f"tools.sandbox=bwrap but bubblewrap cannot run here: {why}")
    if works:
        log.info("python tool: bubblewrap isolation (namespaces; no network, no view of the run's files)")
        return "bwrap"
    log.warning("python tool: bubblewrap unavailable (%s): process isolation (%s); docs/tools.md", why, who())
    return "process"


@functools.cache
def interpreter(python: str, mode: str) -> tuple[str, bool]:
    """(the interpreter the code runs with, whether it runs as `nobody`). With process isolation as root the
    code runs as nobody, who must be able to reach the interpreter: one under /root (pyenv, say) is replaced
    by the system's /usr/bin/python3, logged; without one, the code runs as root, with a loud warning."""
    if mode != "process" or os.getuid() != 0:
        return python, False
    if reachable_by_others(python):
        return python, True
    if reachable_by_others(SYSTEM_PYTHON):
        log.warning("python tool: %s is not reachable by the sandbox user nobody; the code runs with %s",
                    python, SYSTEM_PYTHON)  # fmt: skip
        return SYSTEM_PYTHON, True
    log.warning("python tool: no interpreter that nobody can run: the code runs as ROOT with process "
                "isolation; install bubblewrap (tools.sandbox=bwrap)")  # fmt: skip
    return python, False


SYSTEM_PYTHON = "/usr/bin/python3"


def reachable_by_others(python: str) -> bool:
    """Whether a user who owns nothing can run `python`: its real file and every directory above it, and
    its installation's library folder, carry the others' execute bit."""
    path = shutil.which(python) or python
    if not os.path.exists(path):
        return False
    real = Path(os.path.realpath(path))
    needed = [real, *real.parents, real.parent.parent / "lib"]
    return all(not p.exists() or os.stat(p).st_mode & 0o001 for p in needed)


def who() -> str:
    if os.getuid() == 0:
        return (
            "as root: the code runs as nobody, without network, on a read-only view of the file system with "
            "a private /tmp; it can read world-readable files outside the hidden folders"
        )
    return "not root: the code runs as this user and could write or signal what this user owns"


def bwrap_works() -> tuple[bool, str]:
    if shutil.which("bwrap") is None:
        return False, "bwrap is not installed (apt-get install bubblewrap)"
    cmd = ["bwrap", "--unshare-all", "--die-with-parent"]
    for path in bind_paths(sys.executable):
        cmd += ["--symlink", os.readlink(path), path] if os.path.islink(path) else ["--ro-bind", path, path]
    try:
        got = subprocess.run(
            [*cmd, sys.executable, "-I", "-S", "-c", "print(1)"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return (got.returncode == 0, got.stderr.decode(errors="replace").strip()[-300:])


def bind_paths(python: str) -> list[str]:
    """What bubblewrap shows the code, read-only: the system's programs and libraries and the Python
    installation (the interpreter's prefix and, for a virtual environment, its base)."""
    real = Path(os.path.realpath(shutil.which(python) or python))
    roots = {"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", sys.prefix, sys.base_prefix,
             str(real.parent.parent)}  # fmt: skip
    return sorted(p for p in roots if os.path.lexists(p) and p not in ("/", ""))
