"""The sandbox supervisor: runs one piece of untrusted Python and reports what happened, as JSON.

It is a separate process started by `observe_r1.tools.sandbox` (never the trainer), runs with `python -I -S`
and imports only the standard library, so it starts in milliseconds. Its steps:
  1. become a child subreaper (prctl), so every process the code starts, even one that detaches with setsid
     or a double fork, stays its descendant and can be found and killed;
  2. leave the network (unshare CLONE_NEWNET; as a non-root user with a user namespace too) where the kernel
     allows it, and say which isolation held;
  3. start the code in a fresh working directory with an empty environment, its own session, resource
     limits (CPU seconds, address space, file size, open files, no core files; as root it also drops to the
     `nobody` user, so it can neither signal nor write what belongs to root), through bubblewrap when asked;
  4. read stdout and stderr up to a byte cap, while a watchdog checks the wall clock, the number of
     processes and the bytes written in the working directory 50 times a second;
  5. kill every descendant still alive (repeatedly, until none is left), delete the working directory and
     print {"stdout", "stderr", "exit_code", "signal", "status", "killed", "isolation", ...} on stdout.

Input (stdin, JSON): code, python (interpreter), mode ("process" or "bwrap"), as_nobody, cpu_s, wall_s,
memory_mb, file_mb, disk_mb, max_processes, max_output, binds (read-only paths bubblewrap exposes), hide
(folders process isolation covers as root).
"""

import ctypes
import json
import os
import pwd
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
TICK_S = 0.02
LIBC = ctypes.CDLL(None, use_errno=True)


def leave_network() -> str:
    """Enter a new network namespace (only a loopback device, down): what held, in words."""
    if LIBC.unshare(CLONE_NEWNET) == 0:
        return "network namespace"
    uid, gid = os.getuid(), os.getgid()
    if LIBC.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:  # an unprivileged user namespace, mapped to ourselves
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{uid} {uid} 1"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            try:
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            except OSError:
                pass
        return "network namespace (user namespace)"
    return "none: the kernel refused a network namespace; the code can reach the network"


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
CLONE_NEWNS = 0x20000
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
KEEP_WRITABLE = ("/proc", "/sys", "/dev")


def private_filesystem(disk_mb: int, hide: list[str]) -> str:
    """As root (process isolation): a mount namespace where every file system is read-only, /tmp, /var/tmp,
    /dev/shm and /run/lock are fresh size-capped tmpfs, so the code can write nowhere but there (its
    directory is made in the new /tmp), and the folders in `hide` (the trainer's working and output
    directories, /root, /home) are covered by empty read-only ones. What held, in words."""
    if LIBC.unshare(CLONE_NEWNS) != 0 or LIBC.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return "shared: the kernel refused a mount namespace; world-writable folders (/tmp) are writable"
    with open("/proc/self/mountinfo") as f:
        targets = [line.split()[4] for line in f]
    failed = 0
    for target in sorted(set(targets), key=len):
        if target.startswith(KEEP_WRITABLE) and target != "/":
            continue
        failed += LIBC.mount(None, target.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None) != 0
    for target in SCRATCH:
        if os.path.isdir(target):
            options = f"size={disk_mb}m,mode=1777".encode()
            LIBC.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options)
    hidden = [t for t in hide if os.path.isdir(t)
              and LIBC.mount(b"tmpfs", t.encode(), b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, b"size=4k") == 0]  # fmt: skip
    return ("read-only, private /tmp" + (f" ({failed} mounts stayed writable)" if failed else "")
            + (f"; hidden: {', '.join(hidden)}" if hidden else ""))  # fmt: skip


def descendants() -> list[int]:
    """Every live process below this one (as a subreaper, orphans of our children count too)."""
    me, parent = os.getpid(), {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] != b"Z":
            parent[int(entry)] = int(fields[1])
    out: list[int] = []
    frontier = {me}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier}
        out += frontier
    return out


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_all() -> int:
    """SIGKILL every descendant until none is left (a fork bomb forks while it is being killed)."""
    killed: set[int] = set()
    for _ in range(1000):
        pids = descendants()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        reap()
        time.sleep(0.002)
    reap()
    return len(killed)


def disk_bytes(root: str, limit: int) -> int:
    """Bytes under `root`, counted until they pass `limit`."""
    total = 0
    for path, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(path, name)).st_size
            except OSError:
                continue
            if total > limit:
                return total
    return total


def limits(job: dict, as_nobody: bool):
    mb = 1 << 20

    def apply() -> None:
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        cpu = max(1, int(job["cpu_s"] + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (job["memory_mb"] * mb,) * 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (job["file_mb"] * mb,) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if as_nobody:
            nobody = pwd.getpwnam("nobody")
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
        if os.getuid() != 0:  # root is exempt from RLIMIT_NPROC; the watchdog bounds processes anyway
            nproc = job["max_processes"] + len(descendants_of_user())
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return apply


def descendants_of_user() -> list[int]:
    uid = os.getuid()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _owner(p) == uid]


def _owner(pid: str) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


def bwrap_command(job: dict, workdir: str) -> list[str]:
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--proc", "/proc", "--dev", "/dev",
           "--size", str(job["disk_mb"] << 20), "--tmpfs", "/tmp"]  # fmt: skip
    for path in job["binds"]:
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            cmd += ["--ro-bind", path, path]
    return cmd + ["--bind", workdir, "/sandbox", "--chdir", "/sandbox", "--clearenv", "--setenv", "PATH",
                  "/usr/bin:/bin", "--setenv", "HOME", "/sandbox", "--setenv", "OMP_NUM_THREADS", "1"]  # fmt: skip


def main() -> None:
    job = json.loads(sys.stdin.read())
    LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1)
    isolation = {"mode": job["mode"], "network": leave_network()}
    as_nobody = job["mode"] == "process" and os.getuid() == 0 and job["as_nobody"]
    isolation["user"] = "nobody" if as_nobody else pwd.getpwuid(os.getuid()).pw_name
    if job["mode"] == "process" and os.getuid() == 0:
        isolation["filesystem"] = private_filesystem(job["disk_mb"], job["hide"])
    elif job["mode"] == "process":
        isolation["filesystem"] = "shared: the code can write what this user can"
    workdir = tempfile.mkdtemp(prefix="observe-r1-sandbox-", dir="/tmp")
    with open(os.path.join(workdir, "main.py"), "w") as f:
        f.write(job["code"])
    if as_nobody:
        nobody = pwd.getpwnam("nobody")
        os.chown(workdir, nobody.pw_uid, nobody.pw_gid)
        os.chown(os.path.join(workdir, "main.py"), nobody.pw_uid, nobody.pw_gid)
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    argv = [job["python"], "-I", "main.py"]
    if job["mode"] == "bwrap":
        argv = bwrap_command(job, workdir) + argv
    started = time.monotonic()
    try:
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, preexec_fn=limits(job, as_nobody), start_new_session=True)  # fmt: skip
    except OSError as e:
        shutil.rmtree(workdir, ignore_errors=True)
        failed = {"status": "error", "error": f"could not start the sandbox: {e}", "isolation": isolation}
        print(json.dumps(failed))
        return
    status, streams, dropped = watch(proc, job, workdir, started)
    running = proc.poll() is None
    if running:  # stopped for a limit: the code first (its status read), then everything it left
        proc.kill()
    code = proc.wait()
    killed = kill_all() + running
    shutil.rmtree(workdir, ignore_errors=True)
    if job["mode"] == "bwrap" and code > 128:  # bwrap's init exits with 128 + the signal that killed the code
        code = -(code - 128)
    if status == "ok" and code < 0:
        status = SIGNAL_STATUS.get(signal.Signals(-code), "killed")
    print(json.dumps({
        "status": status,
        "exit_code": code if code >= 0 else None,
        "signal": signal.Signals(-code).name if code < 0 else None,
        "stdout": streams["stdout"].decode("utf-8", "replace"),
        "stderr": streams["stderr"].decode("utf-8", "replace"),
        "output_dropped_bytes": dropped,
        "killed": killed,
        "seconds": round(time.monotonic() - started, 3),
        "isolation": isolation,
    }))  # fmt: skip


SIGNAL_STATUS = {signal.SIGXCPU: "cpu_limit", signal.SIGXFSZ: "file_too_large", signal.SIGKILL: "killed"}


def watch(proc: subprocess.Popen, job: dict, workdir: str, started: float) -> tuple[str, dict, int]:
    """Read the code's output (up to `max_output` bytes a stream, the rest counted and dropped) until it exits
    and its pipes close, or a limit is hit: (status, outputs, dropped bytes)."""
    out = {"stdout": bytearray(), "stderr": bytearray()}
    dropped, exited_at, last_check = 0, None, 0.0
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    while True:
        for key, _ in sel.select(TICK_S):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            room = max(job["max_output"] - len(out[key.data]), 0)
            out[key.data] += chunk[:room]
            dropped += len(chunk) - len(chunk[:room])
        now = time.monotonic()
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and (not sel.get_map() or now - exited_at > 0.2):
            break  # done; pipes still open after the exit belong to a process left behind: it is killed
        if now - started > job["wall_s"]:
            return "timeout", out, dropped
        if now - last_check >= TICK_S:
            last_check = now
            if len(descendants()) > job["max_processes"] + 2:  # + the code itself and bwrap
                return "too_many_processes", out, dropped
            if disk_bytes(workdir, job["disk_mb"] << 20) > job["disk_mb"] << 20:
                return "disk_full", out, dropped
    sel.close()
    return "ok", out, dropped


if __name__ == "__main__":
    main()
