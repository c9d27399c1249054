"""Processes we start, and everything they start, stopped by PID — also on Ctrl-C or failure.

Flower's SuperLink and SuperNode start helpers of their own (a SuperExec in a new session, which starts a
``flwr-serverapp`` / ``flwr-clientapp`` per run or message), so stopping a process stops its descendants too,
found through ``/proc`` before the parent goes (a detached child's parent is still its parent). Every process
we start carries a tag in its environment, inherited by all it starts; :meth:`ProcessGroup.stop_all` ends with
a sweep for the tag, which also finds helpers orphaned by a parent that died on its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from fedseqrec.processes import alive, descendants, send, tagged

TAG_VARIABLE = "FEDSEQREC_DEPLOYMENT"


class ProcessGroup:
    """Named processes, each logging to ``logs/NAME.log``; :meth:`stop_all` leaves none of them, or theirs."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs = logs
        self.tag = str(logs.resolve())
        self.env = {**env, TAG_VARIABLE: self.tag}
        self.running: dict[str, subprocess.Popen] = {}
        self.started: list[int] = []  # every PID started, and the descendants found when stopping them
        logs.mkdir(parents=True, exist_ok=True)

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        if name in self.running and self.running[name].poll() is None:
            raise RuntimeError(f"{name} is already running (pid {self.running[name].pid})")
        with self.log_file(name).open("ab") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env, **(env or {})},
                start_new_session=True,  # Ctrl-C in the terminal reaches us only; we stop them in order
            )
        self.running[name] = process
        self.started.append(process.pid)
        return process

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log_file(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, name: str, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        """``sig`` to the process and its descendants; SIGKILL to whatever is left after ``grace`` seconds."""
        process = self.running.pop(name, None)
        if process is None:
            return
        pids = [process.pid, *descendants(process.pid)]
        send(pids, sig)
        deadline = time.monotonic() + grace
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
        # Helpers a dying parent started at the last moment are its descendants too.
        late = [pid for pid in descendants(process.pid) if pid not in pids]
        send(late, sig)
        pids += late
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.1)
        send([pid for pid in pids if alive(pid)], signal.SIGKILL)
        self.started.extend(pid for pid in pids if pid not in self.started)
        if process.poll() is None:
            process.wait(timeout=5)

    def kill(self, name: str) -> None:
        """A crash: SIGKILL, no chance to say goodbye (its helpers go too, as they would with their host)."""
        self.stop(name, signal.SIGKILL, grace=5.0)

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM to all at once (a SuperLink and its SuperNodes stop in parallel), SIGKILL after ``grace``."""
        processes = list(self.running.values())
        pids = [pid for p in processes for pid in (p.pid, *descendants(p.pid))]
        send(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.1)
        # SIGKILL until nothing of ours is left: a process being started while the others die (a SuperNode's
        # ClientApp) escapes one scan, not repeated ones.
        left = [pid for pid in pids if alive(pid)] + tagged(self.tag, TAG_VARIABLE)
        settle = time.monotonic() + 10.0
        while left and time.monotonic() < settle:
            send(left, signal.SIGKILL)
            time.sleep(0.1)
            left = [pid for pid in pids if alive(pid)] + tagged(self.tag, TAG_VARIABLE)
        for process in processes:
            process.wait(timeout=5)
        self.running.clear()
        self.started.extend(pid for pid in pids if pid not in self.started)

    def still_running(self) -> list[int]:
        """Anything we started, or anything it started, still alive (empty after :meth:`stop_all`)."""
        return sorted({pid for pid in self.started if alive(pid)} | set(tagged(self.tag, TAG_VARIABLE)))
