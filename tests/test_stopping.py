"""Ctrl-C and SIGTERM stop a simulation in seconds (real processes): exit 130 / 143, no traceback, no C stack
dump, none of the processes it started left running, and a run folder that --resume continues."""

import json
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest
from helpers import TINY_FLAGS, work_limit

from fedseqrec.simulation.stopping import descendants

MARK = "FEDSEQREC_TEST_STOPPING"  # in the run's environment: everything it starts inherits it


def _run_processes(token: str) -> list[int]:
    """Every process the run ``pid`` started, wherever it now hangs (Ray detaches some): they carry our mark."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as environ:
                variables = environ.read().split(b"\0")
        except OSError:
            continue
        if f"{MARK}={token}".encode() in variables and _living(int(entry.name)):
            found.append(int(entry.name))
    return found


def _living(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop_after_first_round(out, sig: signal.Signals) -> tuple[int, float, str, list[int]]:
    command = [sys.executable, "-m", "fedseqrec.cli", "simulate", *TINY_FLAGS, "--rounds", "50", "--out", str(out)]
    token = secrets.token_hex(6)
    environment = {**os.environ, MARK: token}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    try:
        for line in process.stdout:
            if line.lstrip().startswith("round   1/50"):
                break
        else:
            pytest.fail(f"the run ended before its first round: {process.stderr.read()[-2000:]}")
        started = sorted((set(descendants(process.pid)) | set(_run_processes(token))) - {process.pid})
        assert started, "a simulation runs Ray's processes below this one"
        sent = time.monotonic()
        process.send_signal(sig)
        code = process.wait(timeout=work_limit(30))
        seconds = time.monotonic() - sent
        deadline = time.monotonic() + work_limit(10)
        while time.monotonic() < deadline and (any(_living(p) for p in started) or _run_processes(token)):
            time.sleep(0.2)
        left = sorted(({p for p in started if _living(p)} | set(_run_processes(token))) - {process.pid})
        return code, seconds, process.stderr.read(), left
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.slow
def test_a_killed_simulation_leaves_nothing_running(tmp_path):
    """SIGKILL: the run cannot stop anything itself; its watchdog stops Ray's processes (once up to a minute)."""
    code, _, _, left = _stop_after_first_round(tmp_path / "run", signal.SIGKILL)
    assert code == -signal.SIGKILL and left == [], f"still running: {left}"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_simulation_at_once_and_leaves_it_resumable(tmp_path, cli, sig):
    out = tmp_path / "run"
    code, seconds, err, left = _stop_after_first_round(out, sig)
    assert code == 128 + sig and seconds < work_limit(5), (code, seconds, err[-2000:])
    assert "Traceback" not in err and "received at time" not in err  # no Python traceback, no C stack dump
    assert f"stopped by {sig.name}; the run folder keeps its last completed round: continue with --resume" in err
    assert left == [], f"still running: {left}"
    assert not (out / "state.pt").exists() or os.path.getsize(out / "state.pt") > 0
    if sig == signal.SIGTERM:
        result = cli("simulate", "--resume", out, "--rounds", "2")
        assert result.code == 0, result.err
        rounds = [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert rounds == [1, 2]
