"""The python tool's sandbox against hostile code (issue 26): every attack is contained, in both isolation
levels where this machine allows them (bubblewrap: CI installs it; process: always). What a level cannot
prevent is pinned as documented behaviour (docs/tools.md), not skipped."""

import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from observe_r1.tools.builtin import PythonTool
from observe_r1.tools.sandbox import Limits, PythonSandbox, bwrap_works

MODES = [
    "process",
    pytest.param("bwrap", marks=pytest.mark.skipif(not bwrap_works()[0], reason="no bubblewrap")),
]
ROOT = os.getuid() == 0
LIMITS = Limits(cpu_s=2, wall_s=4, memory_mb=512, file_mb=8, disk_mb=32, max_processes=8, max_output=4096)


@pytest.fixture(params=MODES)
def sandbox(request, tmp_path_factory):
    if request.param == "process" and not ROOT:
        pytest.skip("process isolation as a non-root user is a resource fence only (docs/tools.md)")
    return PythonSandbox(request.param, LIMITS, hide=(str(tmp_path_factory.getbasetemp()),))


def alive_with(marker: str) -> list[int]:
    """Processes whose command line holds `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_plain_code_runs(sandbox):
    r = sandbox.run("print(sum(range(10)))")
    assert r.ok and r.stdout.strip() == "45"
    assert r.isolation["network"].startswith("network namespace")


def test_fork_bomb_is_contained(sandbox):
    started = time.monotonic()
    r = sandbox.run("import os\nwhile True:\n    os.fork()")
    assert time.monotonic() - started < LIMITS.wall_s + 5
    assert r.status in ("too_many_processes", "ok", "cpu_limit", "timeout") and not r.ok
    assert alive_with("observe-r1-sandbox") == []


def test_busy_loop_is_stopped(sandbox):
    started = time.monotonic()
    r = sandbox.run("while True:\n    pass")
    assert r.status in ("cpu_limit", "timeout")
    assert time.monotonic() - started < LIMITS.wall_s + 5


def test_sleeping_code_times_out(sandbox):
    r = sandbox.run("import time\ntime.sleep(60)")
    assert r.status == "timeout" and r.seconds < LIMITS.wall_s + 2


def test_huge_allocation_fails(sandbox):
    r = sandbox.run("x = bytearray(50 * 2**30)")
    assert not r.ok and "MemoryError" in r.stderr


def test_huge_file_is_refused(sandbox):
    r = sandbox.run("f = open('big', 'wb')\nfor _ in range(1000):\n    f.write(b'x' * 2**24)")
    assert not r.ok and ("File too large" in r.stderr or r.status in ("file_too_large", "disk_full"))


def test_many_files_fill_no_disk(sandbox):
    r = sandbox.run("for i in range(100):\n    open(f'f{i}', 'wb').write(b'x' * 7 * 2**20)")
    assert not r.ok and r.status in ("disk_full", "ok")  # the watchdog, or a full private tmpfs (ENOSPC)


def test_flood_of_output_is_cut(sandbox):
    r = sandbox.run("print('x' * 10**8)")
    assert len(r.stdout) <= LIMITS.max_output and r.output_dropped_bytes > 10**7


def test_network_is_unreachable(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    r = sandbox.run(
        f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('in')"
    )
    server.close()
    assert "in" not in r.stdout and not accepted


def test_the_trainer_is_never_signalled(sandbox):
    r = sandbox.run("import os, signal\nos.kill(os.getppid(), 9)\nos.kill(1, 9)\nprint('tried')")
    assert r.status != "error" or "supervisor" in r.error  # the supervisor may die; this process must not
    r = sandbox.run(f"import os\nos.kill({os.getpid()}, 9)")
    assert not r.ok  # no such process in its namespace, or not permitted


def test_background_processes_do_not_outlive_the_call(sandbox):
    marker = f"{uuid.uuid4().int % 10**6}.{uuid.uuid4().int % 10**6}"
    code = ("import subprocess, os\n"
            f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
            f"if os.fork() == 0:\n    os.setsid()\n    subprocess.Popen(['sleep', '{marker}'])\n    os._exit(0)\n"
            "print('spawned')")  # fmt: skip
    r = sandbox.run(code)
    assert "spawned" in r.stdout
    time.sleep(0.2)
    assert alive_with(marker) == []


def test_nothing_outside_its_folder_is_written(sandbox, tmp_path):
    checkpoint = tmp_path / "checkpoint.txt"
    checkpoint.write_text("weights")
    os.chmod(tmp_path, 0o755)
    os.chmod(checkpoint, 0o644)
    marker = f"/tmp/observe-r1-escape-{uuid.uuid4().hex}"
    code = (f"for path in [{str(checkpoint)!r}, {marker!r}, {str(tmp_path / 'new.txt')!r}]:\n"
            "    try:\n        open(path, 'w').write('pwned')\n        print('wrote', path)\n"
            "    except OSError as e:\n        print('refused', path, type(e).__name__)")  # fmt: skip
    r = sandbox.run(code)
    assert checkpoint.read_text() == "weights" and not (tmp_path / "new.txt").exists()
    assert not os.path.exists(marker)  # a private /tmp (process as root) or bubblewrap's own
    assert f"wrote {checkpoint}" not in r.stdout


def test_reads_of_the_runs_files(sandbox, tmp_path):
    """The trainer's files are out of view (bubblewrap shows none; process isolation hides the working and
    output folders); /etc/passwd is readable under process isolation, as docs/tools.md says."""
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    os.chmod(tmp_path, 0o755)
    os.chmod(secret, 0o644)
    r = sandbox.run(f"print(open({str(secret)!r}).read())")
    assert "s3cret" not in r.stdout
    r = sandbox.run("print(open('/etc/passwd').read()[:4])")
    assert ("root" in r.stdout) == (sandbox.mode == "process")


def test_python_tool_turns_failures_into_observations(sandbox):
    tool = PythonTool(sandbox)
    out = tool({"code": "1/0"}, None)
    assert out.error and "ZeroDivisionError" in out.text
    out = tool({"code": "import time\ntime.sleep(60)"}, None)
    assert out.timeout and "timed out" in out.text
    out = tool({"code": "print(6 * 7)"}, None)
    assert not out.error and out.text.strip() == "42"


def test_auto_mode_says_which_isolation(caplog):
    from observe_r1.tools import sandbox as module

    module.resolve_mode.cache_clear()
    with caplog.at_level("INFO", logger="observe_r1.tools.sandbox"):
        mode = module.resolve_mode("auto")
    assert mode == ("bwrap" if shutil.which("bwrap") and bwrap_works()[0] else "process")
    assert "isolation" in caplog.text
