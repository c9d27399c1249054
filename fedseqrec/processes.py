"""Processes found through ``/proc``, and a watchdog that stops what a run started however the run ends.

A run's helpers (Ray's GCS, raylet and workers; a deployment's SuperLink and SuperNodes) do not all stay below the
process that started them: some start sessions of their own, or are orphaned when a parent dies. Each therefore
carries a tag in its environment, inherited by everything it starts, and :func:`tagged` finds them all. A process
killed with SIGKILL cannot stop its helpers itself: :func:`watched_by_a_watchdog` starts a small detached process
that waits on a pipe from the run's process; the kernel closes the pipe when that process ends, however it ends,
and the watchdog then kills every process still carrying the run's tag.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

RUN_TAG = "FEDSEQREC_RUN"  # the environment variable that tags a simulation's processes


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` (empty where there is no ``/proc``)."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited: it only waits for its parent to reap it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def tagged(tag: str, variable: str) -> list[int]:
    """Living processes (other than this one) whose environment holds ``variable=tag``."""
    needle = f"{variable}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if needle in environ.split(b"\0") and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def send(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def tagged_and_below(tag: str, variable: str) -> list[int]:
    """The processes carrying the tag, and every process below them (Ray's raylet starts agents with an
    environment of its own: they are found as its children)."""
    found = tagged(tag, variable)
    tree = _children()
    todo = list(found)
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return [pid for pid in found if pid != os.getpid() and alive(pid)]


def started_at(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot; None: gone): with the pid, it names one process, not a reused
    number."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def kill_tagged(tag: str, variable: str, seconds: float = 10.0, known: dict[int, int] | None = None) -> None:
    """SIGKILL every process carrying the tag and everything below them, and the ``known`` ones (pid → start time)
    still alive, again and again until none is left (a helper being started while the others die escapes one scan,
    not repeated ones) or ``seconds`` have passed."""
    known = known or {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = tagged_and_below(tag, variable)
        left += [pid for pid, start in known.items() if pid not in left and started_at(pid) == start and alive(pid)]
        if not left:
            return
        send(left, signal.SIGKILL)
        time.sleep(0.1)


WATCHDOG = """
import os, select, sys
if os.fork():  # detached: not a descendant of the run, so nothing that stops the run's descendants stops it
    os._exit(0)
from fedseqrec.processes import kill_tagged, started_at, tagged_and_below
tag, variable, known = sys.argv[1], sys.argv[2], {}
# Until the run's end of the pipe is closed (the run ended, however it ended), note its processes every half
# second: a helper orphaned as the run dies no longer hangs below a tagged process.
while not select.select([sys.stdin], [], [], 0.5)[0]:
    known.update({pid: start for pid in tagged_and_below(tag, variable) if (start := started_at(pid)) is not None})
kill_tagged(tag, variable, known=known)
"""


_WATCHDOGS: list[subprocess.Popen] = []  # their pipes stay open until this process ends


@contextlib.contextmanager
def watched_by_a_watchdog(variable: str = RUN_TAG) -> Iterator[str]:
    """Within the block, every process this one starts carries a fresh tag in ``variable``; when this process ends,
    however it ends (SIGKILL included), a watchdog kills the processes still carrying it. Yields the tag.

    Not when the block ends: a simulation's Ray stays up for the next simulation of the same process (Flower
    reuses it), and the command line ends right after its run anyway."""
    tag = f"{os.getpid()}-{secrets.token_hex(6)}"
    environment = {k: v for k, v in os.environ.items() if k != variable}
    watchdog = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, tag, variable],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment,
        start_new_session=True,  # Ctrl-C in the terminal does not reach it
    )
    watchdog.wait()  # (the forked watchdog goes on: this is only its parent leaving)
    _WATCHDOGS.append(watchdog)
    previous = os.environ.get(variable)
    os.environ[variable] = tag
    try:
        yield tag
    finally:
        if previous is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = previous
