"""Ctrl-C and SIGTERM during a simulation: stop in seconds, leave nothing running, keep the run folder resumable.

Flower's simulation engine runs the ServerApp in a thread and the clients in Ray's processes; a KeyboardInterrupt
in the main thread leaves both running (the process hangs for minutes, a second Ctrl-C dies in
``threading._shutdown``), and SIGTERM aborts through Ray with a C stack dump. Nothing needs a graceful ending: every
file of a run folder is written atomically (``state.pt`` last in a round), so the folder is always at its last
completed round. On the first SIGINT or SIGTERM we therefore kill every process this one started (Ray's GCS,
raylet and workers), say where the run stands, and exit at once with 128 + the signal (130, 143).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator

from fedseqrec.processes import descendants

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def kill_descendants(pid: int | None = None) -> int:
    """SIGKILL every process below ``pid`` (this one by default), the whole tree read before any is killed."""
    victims = descendants(os.getpid() if pid is None else pid)
    for victim in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
    return len(victims)


@contextlib.contextmanager
def stop_at_once_on_signals(where: Callable[[], str]) -> Iterator[None]:
    """Within the block, SIGINT / SIGTERM end the process as described above; ``where``: what to tell the user
    (the run folder and how to continue)."""

    def stop(signum: int, _frame) -> None:
        kill_descendants()
        name = signal.Signals(signum).name
        sys.stderr.write(f"fedseqrec: stopped by {name}; {where()}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in SIGNALS}
    with _ray_keeps_our_sigterm_handler():
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@contextlib.contextmanager
def _ray_keeps_our_sigterm_handler() -> Iterator[None]:
    """``ray.init`` replaces the SIGTERM handler with one that stops Ray's processes one by one, gracefully, then
    raises SystemExit in a main thread that is blocked in Flower (the process hangs); ours kills them all at once.
    (Ray's own ``set_sigterm_handler`` is the one place it does this; where it is missing, nothing is changed.)"""
    try:
        from ray._private import utils
    except ImportError:
        yield
        return
    original = getattr(utils, "set_sigterm_handler", None)
    if original is None:
        yield
        return
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = original
