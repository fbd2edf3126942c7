"""Child processes that end with the process that started them, however it ends.

`wpc up` starts other processes: the embedded PostgreSQL (daemonized by ``pg_ctl``, so
not even our child), the Tansu broker, and the listener's two worker processes
(conformance, event derivation, plus multiprocessing's resource tracker). A clean stop
stops them all; this module covers the other endings (SIGKILL, out of memory, a crash in
a C extension), where no ``finally`` runs.

Two mechanisms, for two kinds of children:

- **Worker processes we write** (multiprocessing pool workers) call `die_with_parent`
  first thing: Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` makes the kernel kill them when
  their parent goes, and a watchdog thread polling ``getppid()`` covers the rest (other
  systems; and PDEATHSIG follows the parent *thread*, not the process). The resource
  tracker needs nothing: it exits when the last holder of its pipe (the parent and these
  workers) is gone.
- **Servers we only launch** (PostgreSQL, Tansu) are watched by a `Guard`: a small
  process (this module run as ``python -m services.reaper``) in its own session, holding
  the read end of a pipe whose only writer is the parent. The parent tells it which pids
  to stop; end of file on that pipe means the parent is gone, whatever killed it, and the
  guard then stops them (SIGINT to the postmaster is PostgreSQL's fast shutdown). A signal
  would not do for PostgreSQL: ``pg_ctl`` starts it as a daemon, outside our process
  tree, and a setuid (root runs it as another user) clears PDEATHSIG anyway. Tansu, our
  direct child, also gets PDEATHSIG (`parent_death_preexec`), for when the guard is
  killed together with its parent.

Pids are identified by (pid, start time) so that a guard, or a later `wpc up` finding a
stale server, never signals a process that merely reuses a dead server's pid.

This module imports only the standard library: the guard starts in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_WATCH_INTERVAL_S = 1.0


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent (thread) dies. False where
    unsupported (not Linux), so callers keep a fallback."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def parent_death_preexec(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` for `subprocess.Popen` that arms PDEATHSIG in the child before it
    runs the program (kept across exec), or None where it would not hold.

    Only from the main thread: PDEATHSIG fires when the thread that forked the child ends,
    and a pool thread may end long before the process. The C function is looked up here,
    in the parent: between fork and exec the child only makes that one call."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    option, signum = _PR_SET_PDEATHSIG, int(sig)

    def arm() -> None:
        prctl(option, signum, 0, 0, 0)

    return arm


def die_with_parent(parent_pid: int, name: str | None = None) -> None:
    """For a worker process's initializer: exit when ``parent_pid`` is gone.

    ``parent_pid`` is passed in rather than read here: if the parent died while the
    worker was starting, ``getppid()`` would already name init (or a subreaper).
    ``name``: the process's name as `ps`, `top` and ``/proc/<pid>/stat`` show it (Linux,
    at most 15 bytes), so each worker's CPU can be told apart (`wpc bench pipeline`)."""
    if name is not None:
        with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
            comm.write(name[:15])
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # died before the signal was armed
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_WATCH_INTERVAL_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


# --- processes, identified by pid and start time --------------------------------------------


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists; it belongs to another user (PostgreSQL run as its own user by root)
    return _state(pid) != "Z"


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def started_at(pid: int) -> float | None:
    """When ``pid`` started (epoch seconds), from /proc; None without /proc or process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, IndexError, StopIteration, ValueError):
        return None
    # field 22 of stat (starttime) is the 20th after the ")" that ends the command name
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def same_process(pid: int, started: float | None, tolerance_s: float = 2.0) -> bool:
    """``pid`` is alive and is the process that started at ``started`` (when known)."""
    if not pid_alive(pid):
        return False
    if started is None:
        return True
    now = started_at(pid)
    return now is None or abs(now - started) <= tolerance_s


def stop_process(pid: int, steps: Sequence[tuple[int, float]], *, started: float | None = None) -> bool:
    """Send each signal of ``steps`` in turn, waiting up to its seconds for ``pid`` to go,
    then SIGKILL. True when the process is gone (or was never there)."""
    if not same_process(pid, started):
        return True
    for sig, wait_s in steps:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(pid, wait_s):
            return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return _wait_gone(pid, 2.0)


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child (Tansu)
        time.sleep(0.02)
    return True


# --- the guard --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Watched:
    pid: int
    started: float | None
    steps: tuple[tuple[int, float], ...]  # (signal, seconds to wait) in turn, then SIGKILL


class Guard:
    """The parent's side: start the guard, tell it what to stop, dismiss it at a clean stop."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Its own session: a terminal's Ctrl-C goes to our process group, not to the guard.
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "services.reaper", str(os.getpid())],
            stdin=subprocess.PIPE, start_new_session=True,
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def watch(self, pid: int, steps: Sequence[tuple[int, float]] = ((signal.SIGTERM, 5.0),)) -> None:
        """Stop ``pid`` with ``steps`` (then SIGKILL) if we die first."""
        plan = ",".join(f"{int(sig)}:{seconds}" for sig, seconds in steps)
        self._send(f"watch {pid} {started_at(pid) or 0} {plan}")

    def forget(self, pid: int) -> None:
        self._send(f"forget {pid}")

    def _send(self, line: str) -> None:
        if self._proc is None or self._proc.stdin is None:
            return
        with contextlib.suppress(OSError):
            self._proc.stdin.write(line.encode() + b"\n")
            self._proc.stdin.flush()

    def dismiss(self) -> None:
        """At a clean stop, after the servers were stopped: the guard finds nothing left to
        stop and exits."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parse_command(line: str, watched: dict[int, Watched]) -> None:
    """Apply one line of the guard's protocol to ``watched`` (ignores what it cannot read)."""
    parts = line.split()
    try:
        if parts[0] == "watch" and len(parts) == 4:
            pid = int(parts[1])
            started = float(parts[2]) or None
            steps = tuple((int(sig), float(wait)) for sig, wait in (step.split(":") for step in parts[3].split(",")))
            watched[pid] = Watched(pid, started, steps)
        elif parts[0] == "forget" and len(parts) == 2:
            watched.pop(int(parts[1]), None)
    except (IndexError, ValueError):
        pass


def guard_main(parent_pid: int, stdin_fd: int = 0) -> int:
    """The guard process: read commands until end of file (or until the parent is gone, should
    the pipe have leaked to another process), then stop what is still watched, the last
    registered first (the broker before the database)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watched: dict[int, Watched] = {}
    pending = b""
    while True:
        readable, _, _ = select.select([stdin_fd], [], [], _WATCH_INTERVAL_S)
        if readable:
            chunk = os.read(stdin_fd, 4096)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    parse_command(line.decode("ascii", "replace"), watched)
        elif os.getppid() != parent_pid:
            break
    for w in reversed(list(watched.values())):
        stop_process(w.pid, w.steps, started=w.started)
    return 0


if __name__ == "__main__":
    sys.exit(guard_main(int(sys.argv[1])))
