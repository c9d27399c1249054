"""ε never goes down: ledger files carry a checksum, the server keeps the authoritative record of every release
and refuses a client whose ledger lost or changed it, a node without its ledger refuses to train unless told to
continue from the server's record, `report` recomputes every stored ε, and a run folder is used by one process at
a time; a run killed before its first state can be resumed, a broken state is refused before anything changes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from helpers import TINY as TINY_PLAIN
from helpers import TINY_FLAGS, client_context, message

from fedseqrec.client.client_app import make_client_app
from fedseqrec.errors import UserError
from fedseqrec.federated.task import build_global_model, cached_dataset
from fedseqrec.privacy.accounting import epsilon
from fedseqrec.privacy.ledger import LedgerRecord, PrivacyLedger, ledger_metrics
from fedseqrec.privacy.local_dpsgd import LocalDPSGD
from fedseqrec.privacy.mechanism import RunFacts
from fedseqrec.results.folder import RunFolder
from fedseqrec.server.loop import Progress
from fedseqrec.simulation.engine import simulate

TINY = TINY_PLAIN.replace(mechanism="dp-sgd", noise_multiplier=1.0)


def _ledger(rounds: int, steps: int = 10) -> PrivacyLedger:
    ledger = PrivacyLedger("1", 1e-5, "rdp")
    for r in range(1, rounds + 1):
        ledger.add(LedgerRecord(r, 1.0, 0.1, steps))
    return ledger


# --- the ledger file ----------------------------------------------------------------------------------------------


def test_an_edited_ledger_file_is_refused_by_its_checksum(tmp_path):
    path = tmp_path / "ledger.json"
    _ledger(3).save(path)
    assert PrivacyLedger.load(path) == _ledger(3)
    value = json.loads(path.read_text())
    value["records"][1]["steps"] = 1  # the finding: `steps: 1` lowers ε from 6.70 to 5.08
    path.write_text(json.dumps(value))
    with pytest.raises(UserError, match="checksum does not match its content: edited or corrupted"):
        PrivacyLedger.load(path)
    del value["sha256"]
    path.write_text(json.dumps(value))
    with pytest.raises(UserError, match="checksum"):
        PrivacyLedger.load(path)


# --- the server's record ------------------------------------------------------------------------------------------


def _report(ledger: PrivacyLedger, partition: int = 1) -> Message:
    metrics = MetricRecord({"partition-id": partition, "num-examples": 10, **ledger_metrics(ledger)})
    content = {"metrics": metrics, "arrays": ArrayRecord({"w": torch.zeros(1)})}
    return Message(RecordDict(content), dst_node_id=1, message_type="train")


def _round(server: LocalDPSGD, server_round: int, ledger: PrivacyLedger) -> str | None:
    """One reply through the server as the round loop passes it: checked, then observed or refused."""
    reply = _report(ledger)
    problem = server.reply_problem(server_round, reply.content["metrics"])
    if problem is None:
        server.observe(server_round, [reply])
    else:
        server.account_refused(server_round, 1, reply, problem)
    return problem


def test_the_server_refuses_a_shrunk_or_edited_ledger_and_its_epsilon_never_falls():
    # batch 1 and 10 users: the plan of every round is σ 1.0, q 0.1, 10 steps, as _ledger records it
    server = LocalDPSGD(TINY.privacy, RunFacts(None, 1, "iid", lambda text: None, users=100, horizon=4))
    assert _round(server, 1, _ledger(1)) is None and _round(server, 2, _ledger(2)) is None
    two_rounds = server.max_epsilon()
    assert json.loads(server.client_config(1)["held-ledger"]) == [
        {"round": r, "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 10} for r in (1, 2)
    ]
    restarted = PrivacyLedger("1", 1e-5, "rdp", records=[LedgerRecord(3, 1.0, 0.1, 10)])  # a lost ledger
    assert _round(server, 3, restarted) == "privacy ledger has 1 records, fewer than the 2 the server holds"
    # round 3's update was released all the same: the server's plan of it is added, ε only grows
    assert server.max_epsilon() == pytest.approx(_ledger(3).epsilon()) and server.max_epsilon() > two_rounds
    edited = _ledger(4)
    edited.records[1] = LedgerRecord(2, 1.0, 0.1, 1)
    assert _round(server, 4, edited).startswith("privacy ledger changed the record of round 2 that the server holds")
    assert [r["steps"] for r in server.clients["1"]["ledger"]] == [10, 10, 10, 10]
    assert server.max_epsilon() == pytest.approx(_ledger(4).epsilon())
    assert _round(server, 5, _ledger(5)) is None
    assert [r["round"] for r in server.clients["1"]["refusals"]] == [3, 4]


# --- the node -----------------------------------------------------------------------------------------------------


def _arrays() -> ArrayRecord:
    torch.manual_seed(0)
    return ArrayRecord(build_global_model(cached_dataset(TINY.data).sequences, TINY.model).state_dict())


def test_a_node_without_its_ledger_refuses_unless_told_to_continue_from_the_servers_record(tmp_path):
    app, path, arrays = make_client_app(), tmp_path / "client-1.json", _arrays()
    context = client_context(TINY, 1, path)
    for server_round in (1, 2):
        reply = app(message("train", arrays, TINY, server_round), context)
    held = [
        dict(zip(("round", "noise_multiplier", "sample_rate", "steps"), r, strict=True))
        for r in zip(
            *(reply.content["metrics"][f"ledger-{k}"] for k in ("round", "noise", "rate", "steps")), strict=True
        )
    ]
    spent = reply.content["metrics"]["epsilon"]
    path.unlink()  # the node's disk was replaced
    sent = {"held-ledger": json.dumps(held)}
    refused = app(message("train", arrays, TINY, 3, **sent), client_context(TINY, 1, path))
    assert refused.has_error()
    assert "no privacy ledger, but the server holds 2 rounds of this client" in refused.error.reason
    resumed = app(message("train", arrays, TINY, 3, **sent), client_context(TINY, 1, path, **{"new-ledger": "true"}))
    metrics = resumed.content["metrics"]
    assert list(metrics["ledger-round"]) == [1, 2, 3] and metrics["epsilon"] > spent  # from the record, not zero
    shorter = PrivacyLedger.load(path)
    shorter.records = shorter.records[:1]
    shorter.save(path)
    refused = app(message("train", arrays, TINY, 4, **sent), client_context(TINY, 1, path))
    assert refused.has_error() and "lacks or changed records of the 2 rounds the server holds" in refused.error.reason


# --- the report ---------------------------------------------------------------------------------------------------


def _reported_run(folder: Path) -> tuple[dict, list]:
    """A run folder whose privacy.json holds one client of two rounds, its stored ε edited to 0.1."""
    folder.mkdir()
    records = [{"round": r, "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 10} for r in (1, 2)]
    entry = {
        "epsilon": 0.1,
        "epsilon_checked": 0.1,
        "delta": 1e-5,
        "accountant": "rdp",
        "budget": None,
        "status": "active",
        "ledger": records,
    }
    history = [{"round": 2, "max_epsilon": 0.1, "epsilons": {"0": 0.1}}]
    (folder / "config.json").write_text(json.dumps({"run_config": TINY.to_run_config()}))
    (folder / "privacy.json").write_text(json.dumps({"clients": {"0": entry}, "history": history}))
    (folder / "metrics.jsonl").write_text(json.dumps({"round": 2, "valid": {"NDCG@10": 0.1}}) + "\n")
    return entry, history


def test_report_recomputes_an_edited_epsilon_and_flags_it(tmp_path, cli):
    folder = tmp_path / "run"
    _reported_run(folder)
    true = epsilon([(1.0, 0.1, 10)] * 2, 1e-5)
    result = cli("report", folder)
    assert result.code == 1
    assert "flagged: client 0: stored ε 0.1 disagrees with its 2 records" in result.err
    report = json.loads((folder / "privacy_report.json").read_text())
    assert report["max_epsilon"] == pytest.approx(true) and report["clients"][0]["epsilon_recomputed"] == true
    assert len(report["flags"]) == 2 and "flagged" in (folder / "privacy_report.md").read_text()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda privacy: privacy.pop("clients"), "no 'clients' object"),
        (lambda privacy: privacy["clients"]["0"].pop("ledger"), "client 0: no 'ledger'"),
        (lambda privacy: privacy["clients"]["0"].update(delta="1e-5"), "client 0: 'delta' is '1e-5'"),
        (lambda privacy: privacy["clients"]["0"]["ledger"][0].pop("steps"), "a ledger record without round"),
        (lambda privacy: privacy.update(history=[{"round": 2}]), "no 'history' list of rounds"),
    ],
    ids=["no clients", "no ledger", "delta a string", "record without steps", "history without epsilon"],
)
def test_report_on_a_privacy_record_missing_what_it_reads_is_one_line_and_exit_2(tmp_path, cli, change, expected):
    """(issue 29: a privacy.json missing keys ended in `internal error`, exit 1)"""
    folder = tmp_path / "run"
    _reported_run(folder)
    privacy = json.loads((folder / "privacy.json").read_text())
    change(privacy)
    (folder / "privacy.json").write_text(json.dumps(privacy))
    result = cli("report", folder)
    assert result.code == 2 and expected in result.err and "internal error" not in result.err
    assert len(result.err.strip().splitlines()) == 1 and not (folder / "privacy_report.json").exists()


# --- the run folder -----------------------------------------------------------------------------------------------


def _unfinished(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"fedseqrec": "0", "run_config": TINY_PLAIN.to_run_config()}))
    return folder


def test_a_folder_in_use_by_another_process_is_refused(tmp_path, cli):
    folder = _unfinished(tmp_path / "run")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fedseqrec.results.folder import RunFolder; "
            f"RunFolder({str(folder)!r}).lock(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = cli("simulate", "--resume", folder)
        assert result.code == 2 and f"in use by another fedseqrec process (pid {holder.pid})" in result.err
    finally:
        holder.kill()
        holder.wait()
    RunFolder(folder).lock().release()  # the holder is gone: the lock went with it


def test_a_broken_state_is_refused_before_the_folder_changes(tmp_path, cli):
    folder = _unfinished(tmp_path / "run")
    before = (folder / "config.json").read_text()
    for content in (b"", b"\x80\x04garbage that is not a torch file"):
        (folder / "state.pt").write_bytes(content)
        result = cli("simulate", "--resume", folder, "--rounds", "9")
        assert result.code == 2 and "state.pt: unreadable run state (" in result.err
        assert "weights_only=False" not in result.err and "Traceback" not in result.err
        assert (folder / "config.json").read_text() == before


@pytest.mark.slow
def test_a_run_killed_before_its_first_state_resumes_to_the_same_weights(tmp_path):
    cfg = TINY_PLAIN.replace(rounds=2)
    simulate(cfg, out=tmp_path / "whole")
    folder = tmp_path / "killed"
    simulate(cfg.replace(rounds=1), out=folder)
    for name in ("state.pt", "metrics.json", "model.pt", "model_last.pt"):
        (folder / name).unlink()  # as if killed during round 1
    simulate(cfg, resume=folder, rounds=2)
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2
    whole, resumed = (torch.load(p / "model_last.pt", weights_only=True) for p in (tmp_path / "whole", folder))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.slow
def test_deleted_and_edited_ledgers_are_refused_and_epsilon_never_falls(tmp_path):
    out = tmp_path / "run"
    simulate(TINY.replace(rounds=2, min_clients=1), out=out)
    before = json.loads((out / "privacy_report.json").read_text())
    (out / "ledgers" / "client-0.json").unlink()
    edited = json.loads((out / "ledgers" / "client-1.json").read_text())
    edited["records"][0]["steps"] = 1
    (out / "ledgers" / "client-1.json").write_text(json.dumps(edited))
    messages = []
    simulate(TINY, resume=out, rounds=3, progress=Progress(on_message=messages.append))
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds[2]["clients"] == 1 and sorted(rounds[2]["failed"]) == ["client 0", "client 1"]
    assert any("client 0" in m and "no privacy ledger, but the server holds 2 rounds" in m for m in messages)
    assert any("client 1" in m and "checksum does not match" in m for m in messages)
    after = json.loads((out / "privacy_report.json").read_text())
    eps = {c["client"]: c["epsilon"] for c in after["clients"]}
    old = {c["client"]: c["epsilon"] for c in before["clients"]}
    assert eps["0"] == pytest.approx(old["0"]) and eps["1"] == pytest.approx(old["1"]) and eps["2"] > old["2"]
    assert after["max_epsilon"] >= before["max_epsilon"]
    # the report reads the client's own ledger files too: the edited one is named, never taken
    assert [flag for flag in after["flags"] if "client-1.json" in flag and "checksum does not match" in flag]
    assert all("client-1.json" in flag for flag in after["flags"])


@pytest.mark.slow
def test_a_refused_client_is_one_line_not_the_engines_traceback(tmp_path):
    """As a user runs it (a process of its own, whose Ray workers print to it): the refusal of a deleted ledger is
    the round's line, with no traceback around it (it used to be some 150 lines of them)."""
    out = tmp_path / "run"
    simulate(TINY.replace(rounds=2, min_clients=1), out=out)
    (out / "ledgers" / "client-0.json").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "fedseqrec.cli", "simulate", "--resume", str(out), "--rounds", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed
    assert printed.count("no privacy ledger, but the server holds 2 rounds") == 1
    assert "Traceback" not in printed and "ClientAppException" not in printed


@pytest.mark.slow
def test_a_dp_run_killed_between_the_clients_ledgers_and_the_servers_state_resumes(tmp_path):
    """The clients wrote round 3 to their ledgers, the server was killed before saving round 3: the resumed run
    trains round 3 again — a second release, composed with the first, never a dead end."""
    out = tmp_path / "run"
    simulate(TINY.replace(rounds=2), out=out)
    saved = {name: (out / name).read_bytes() for name in ("state.pt", "privacy.json", "metrics.jsonl")}
    simulate(TINY, resume=out, rounds=3)
    once = json.loads((out / "privacy_report.json").read_text())["max_epsilon"]
    for name, content in saved.items():  # back to the state after round 2; the ledgers keep round 3
        (out / name).write_bytes(content)
    results, _ = simulate(TINY, resume=out, rounds=3)
    assert results["rounds_run"] == 3
    report = json.loads((out / "privacy_report.json").read_text())
    assert [r["round"] for r in report["clients"][0]["ledger"]] == [1, 2, 3, 3]
    assert report["max_epsilon"] > once and report["flags"] == []


# A `fedseqrec simulate` process that kills itself (SIGKILL: no handler runs) halfway through writing the state of
# the round given, as a power cut or the OOM killer would.
KILLED_WHILE_SAVING = """
import os, signal, sys
import fedseqrec.results.folder as folder
from fedseqrec.cli import main

kill_round, saves = int(sys.argv[1]), []
atomic_write = folder._atomic_write

def write_then_die(path, write):
    if path.name == "state.pt":
        saves.append(path)
        if len(saves) == kill_round:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            write(tmp)
            os.truncate(tmp, tmp.stat().st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    atomic_write(path, write)

folder._atomic_write = write_then_die
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_run_killed_while_saving_its_state_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    flags = [*TINY_FLAGS, "--rounds", "3"]
    subprocess.run(
        [sys.executable, "-m", "fedseqrec.cli", "simulate", *flags, "--out", str(tmp_path / "whole")],
        check=True,
        capture_output=True,
    )
    folder = tmp_path / "killed"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_SAVING, "2", "simulate", *flags, "--out", str(folder)],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert list(folder.glob(".state.pt.tmp-*")), "the kill did not land inside the save"
    assert torch.load(folder / "state.pt", weights_only=True)["round"] == 1  # the last complete save
    resumed = subprocess.run(
        [sys.executable, "-m", "fedseqrec.cli", "simulate", "--resume", str(folder)], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list(folder.glob(".*.tmp-*"))
    assert [json.loads(line)["round"] for line in (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    whole, again = (torch.load(p / "model_last.pt", weights_only=True) for p in (tmp_path / "whole", folder))
    assert all(torch.equal(whole[k], again[k]) for k in whole)
