"""Deployment: exported client folders, certificates and node keys, process clean-up, and real SuperLink /
SuperNode processes on 127.0.0.1 with TLS and SuperNode authentication — a full run, an unregistered node
refused, and a node killed and restarted whose ε never drops."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from helpers import TINY, TINY_FLAGS, independent_epsilons, work_limit

from fedseqrec.client.client_app import make_client_app
from fedseqrec.data.export import export_partitions, load_client_export
from fedseqrec.deployment.credentials import make_certificates, make_node_key
from fedseqrec.deployment.local import LocalDeployment, write_app
from fedseqrec.deployment.processes import TAG_VARIABLE, ProcessGroup
from fedseqrec.deployment.runner import progress_line
from fedseqrec.errors import UserError
from fedseqrec.federated.task import build_global_model, evaluate_locally, load_client_data, load_exported_client
from fedseqrec.privacy.ledger import PrivacyLedger
from fedseqrec.processes import tagged
from fedseqrec.results.folder import RunFolder
from fedseqrec.server.loop import Federation

DP_TINY = TINY.replace(mechanism="dp-sgd", noise_multiplier=1.0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "clients"
    export_partitions(TINY.data, out)
    return out


# --- exported client folders --------------------------------------------------------------------------------------


def test_export_holds_each_clients_users_only_with_the_global_vocabulary_and_split(exported):
    index = json.loads((exported / "export.json").read_text())
    assert index["num_partitions"] == 3 and [c["folder"] for c in index["clients"]] == [
        "client-000",
        "client-001",
        "client-002",
    ]
    whole = load_client_data(TINY, 0, 3)  # the simulation's view: the whole dataset, partition 0's users
    seen = set()
    for client in range(3):
        full = load_client_data(TINY, client, 3)
        export = load_client_export(exported / f"client-{client:03d}")
        assert export.client == client and export.num_partitions == 3
        data = export.sequences
        assert list(data.vocab.users[1:]) == list(full.sequences.vocab.users[full.users])
        assert list(data.vocab.items) == list(whole.sequences.vocab.items)  # every item: the model's shape
        for i, user in enumerate(full.users, start=1):
            assert np.array_equal(data.sequence(i), full.sequences.sequence(user))
            assert data.timestamps[data.offsets[i]] == full.sequences.timestamps[full.sequences.offsets[user]]
            split = export.split
            assert (split.train_end[i], split.valid_pos[i], split.test_pos[i]) == (
                full.split.train_end[user],
                full.split.valid_pos[user],
                full.split.test_pos[user],
            )
        seen |= set(data.vocab.users[1:])
    assert len(seen) == TINY.data.shop.users  # together, every user exactly once


def test_a_client_evaluates_its_exported_folder_exactly_as_its_partition_of_the_whole(exported):
    model = build_global_model(load_client_data(TINY, 1, 3).sequences, TINY.model)
    from_partition = evaluate_locally(model, load_client_data(TINY, 1, 3), "full", "test")
    from_folder = evaluate_locally(model, load_exported_client(exported / "client-001", TINY), "full", "test")
    assert from_folder.count == from_partition.count > 0
    for name, value in from_partition.sums.items():
        assert from_folder.sums[name] == pytest.approx(value, abs=1e-9)


def test_the_client_app_takes_its_partition_from_its_folder(exported):
    app = make_client_app()
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"data-path": str(exported / "client-002")},
        state=RecordDict(),
        run_config={},
    )
    query = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=7, message_type=MessageType.QUERY)
    reply = app(query, context)
    assert dict(reply.content["metrics"]) == {"partition-id": 2, "num-partitions": 3}
    model = build_global_model(load_client_data(TINY, 2, 3).sequences, TINY.model)
    config = ConfigRecord({**TINY.to_run_config(), "server-round": 1, "which": "valid"})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config})
    reply = app(Message(content, dst_node_id=7, message_type=MessageType.EVALUATE), context)
    assert reply.content["metrics"]["partition-id"] == 2
    full = load_client_data(TINY, 2, 3)
    assert reply.content["metrics"]["num-examples"] == int((full.split.valid_pos[full.users] >= 0).sum()) > 0


def test_a_folder_from_a_different_export_is_refused(exported):
    with pytest.raises(Exception, match="client 0 of 3, but the run has 4 clients"):
        load_exported_client(exported / "client-000", TINY.replace(clients=4))


def test_the_server_folder_has_the_vocabulary_and_no_users(exported, tmp_path):
    export = load_client_export(exported / "client-000")
    server = TINY.replace(data=str(exported / "server"))
    assert json.loads((exported / "server" / "manifest.json").read_text())["counts"]["users"] == 0
    with pytest.raises(UserError, match="holds no held-out events"):
        Federation(None, server, RunFolder.create(tmp_path / "a", server))
    federation = Federation(None, server.replace(evaluation="federated"), RunFolder.create(tmp_path / "b", server))
    assert federation.ds.sequences.n_users == 0
    assert list(federation.ds.sequences.vocab.items) == list(export.sequences.vocab.items)
    # the global model the server builds fits every client's folder
    build_global_model(export.sequences, TINY.model, federation.model.state_dict())


def test_export_partitions_command(tmp_path, cli):
    result = cli("data", "export-partitions", *TINY_FLAGS[:10], "--out", tmp_path / "e")
    assert result.code == 0, result.err
    assert "3 client folders written" in result.out
    names = ["client-000", "client-001", "client-002", "export.json", "server"]
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == names
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    result = cli("data", "export-partitions", *TINY_FLAGS[:10], "--out", tmp_path / "other")
    assert result.code == 2 and "not empty" in result.err and (tmp_path / "other" / "keep.txt").exists()


# --- credentials ----------------------------------------------------------------------------------------------------


def test_certificates_chain_to_our_ca_and_name_the_hosts(tmp_path):
    certs = make_certificates(tmp_path, ["link.example.org", "10.0.0.5"])
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5", "127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["link.example.org", "localhost"]  # + loopback, always
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (certs.server_key.stat().st_mode & 0o777) == 0o600 and (
        (tmp_path / "ca.key").stat().st_mode & 0o777
    ) == 0o600


def test_node_keys_are_openssh_p384_pairs(tmp_path):
    public = make_node_key(tmp_path / "node-0")
    private = load_ssh_private_key((tmp_path / "node-0").read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert load_ssh_public_key(public.read_bytes()).public_numbers() == private.public_key().public_numbers()
    assert ((tmp_path / "node-0").stat().st_mode & 0o777) == 0o600


def test_credentials_command(tmp_path, cli):
    result = cli("deploy", "credentials", "--out", tmp_path / "c", "--hosts", "10.0.0.5", "--nodes", "2")
    assert result.code == 0, result.err
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "ca.crt",
        "ca.key",
        "node-000",
        "node-000.pub",
        "node-001",
        "node-001.pub",
        "server.key",
        "server.pem",
    ]
    again = cli("deploy", "credentials", "--out", tmp_path / "c")
    assert again.code == 2 and "refusing to overwrite" in again.err


def test_credentials_force_over_world_readable_files_and_a_symlink(tmp_path, cli):
    out = tmp_path / "c"
    assert cli("deploy", "credentials", "--out", out, "--nodes", "1").code == 0
    for name in ("ca.key", "server.key", "node-000"):
        (out / name).chmod(0o644)  # an older release, or a careless copy
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not a key")
    (out / "ca.key").unlink()
    (out / "ca.key").symlink_to(outside)  # planted: --force must not write the CA key through it
    assert cli("deploy", "credentials", "--out", out, "--nodes", "1", "--force").code == 0
    assert outside.read_text() == "not a key"
    for name in ("ca.key", "server.key", "node-000"):
        path = out / name
        assert not path.is_symlink() and (path.stat().st_mode & 0o777) == 0o600, name
    assert b"PRIVATE KEY" in (out / "ca.key").read_bytes()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_deploy_app_writes_the_run_config_flwr_run_submits(tmp_path, cli):
    import tomli  # a dependency of flwr; tomllib is Python 3.11+

    from fedseqrec.federated.config import RunConfig

    result = cli(
        "deploy",
        "app",
        tmp_path / "app",
        "--data",
        tmp_path / "server",
        "--evaluation",
        "federated",
        "--clients",
        "3",
        "--rounds",
        "7",
        "--privacy",
        "dp-sgd",
        "--epsilon",
        "4",
        "--out",
        tmp_path / "run",
    )
    assert result.code == 0, result.err
    app = tomli.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"]["serverapp"] == "fedseqrec.server.server_app:app"
    cfg = RunConfig.from_run_config(app["config"])
    assert (cfg.data.data, cfg.data.clients, cfg.algorithm.rounds, cfg.privacy.epsilon, cfg.privacy.mechanism) == (
        str(tmp_path / "server"),
        3,
        7,
        4.0,
        "dp-sgd",
    )
    assert cfg.out == str(tmp_path / "run") and cfg.evaluation.mode == "federated"
    assert cfg.privacy.horizon == 7  # the rounds the ε target is calibrated for, recorded
    relative = cli("deploy", "app", tmp_path / "app2", "--out", "runs/x")
    assert relative.code == 2 and "absolute path" in relative.err and not (tmp_path / "app2").exists()


# --- processes -----------------------------------------------------------------------------------------------------


def test_stopping_takes_descendants_and_orphans_too(tmp_path):
    group = ProcessGroup(tmp_path / "logs", {})
    # A child that starts a grandchild in a new session (as Flower's SuperExec is started), and an orphan whose
    # parent exits at once: only the environment tag finds it.
    group.start("parent", ["bash", "-c", "setsid sleep 300 & sleep 300"])
    group.start("orphaning", ["bash", "-c", "setsid sleep 300 & exit 0"])
    time.sleep(0.5)
    assert len(group.still_running()) >= 3
    group.kill("parent")
    group.stop_all(grace=work_limit(2.0))
    assert group.still_running() == [] and tagged(group.tag, TAG_VARIABLE) == []


def test_progress_shows_the_server_apps_messages_once():
    lines = [
        "\x1b[92mINFO \x1b[0m:      round   1/2  clients   2  loss  3.405",
        "11/28/2026 15:03:04:INFO:round   1/2  clients   2  loss  3.405",
        "\x1b[92mINFO \x1b[0m:      configure_train: Sampled 2 nodes (out of 2)",
        "\x1b[93mWARNING \x1b[0m:   client 1 failed",
        "Successfully installed fedseqrec-deployment to /tmp/x",
    ]
    assert [progress_line(line) for line in lines] == [
        "round   1/2  clients   2  loss  3.405",
        None,
        None,
        "WARNING: client 1 failed",
        None,
    ]


# --- real processes: SuperLink and SuperNodes on 127.0.0.1 ---------------------------------------------------------


def _no_processes_left(deployment_folder: Path) -> None:
    tag = str((deployment_folder / "logs").resolve())
    assert tagged(tag, TAG_VARIABLE) == [], "processes of the deployment outlived it"


@pytest.mark.slow
def test_deploy_local_runs_with_tls_and_node_authentication(tmp_path, cli):
    out = tmp_path / "run"
    result = cli(
        "deploy",
        "local",
        *TINY_FLAGS,
        "--clients",
        "2",
        "--rounds",
        "2",
        "--privacy",
        "dp-sgd",
        "--noise-multiplier",
        "1.0",
        "--audit-canaries",
        "30",
        "--timeout",
        str(round(work_limit(240))),
        "--out",
        out,
    )
    assert result.code == 0, result.err + result.out
    assert "TLS and SuperNode authentication" in result.out and "round   2/2  clients   2" in result.out
    audit = json.loads((out / "audit.json").read_text())  # the deployment's run ends with its audit too
    assert audit["consistent"] is True and "empirical ε ≥" in result.out
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["clients"] == 2 for r in rounds)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rounds_run"] == 2 and 0.0 < metrics["test"]["NDCG@10"] <= 1.0
    report = json.loads((out / "privacy_report.json").read_text())
    assert (out / "privacy_report.md").stat().st_size > 0
    for client in report["clients"]:
        node_ledger = PrivacyLedger.load(out / "deployment" / f"node-{client['client']}" / "ledger.json")
        assert [r.round for r in node_ledger.records] == [1, 2]  # each node kept its own ledger on its disk
        records = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in client["ledger"]]
        assert client["epsilon"] == pytest.approx(node_ledger.epsilon())
        assert client["epsilon"] == pytest.approx(independent_epsilons(records, client["delta"])[0], rel=0.01)
    superlink_log = (out / "deployment" / "logs" / "superlink.log").read_text()
    assert "--insecure" not in superlink_log
    _no_processes_left(out / "deployment")


@pytest.mark.slow
def test_deploy_local_aggregates_under_secagg_plus(tmp_path, cli):
    """SecAgg+ across real SuperNode processes: Flower's client mod keeps its keys in each node's context between
    the four messages of a round (a fresh ClientApp process each)."""
    out = tmp_path / "run"
    result = cli(
        "deploy",
        "local",
        *TINY_FLAGS,
        "--rounds",
        "1",  # (a round is four messages, each a fresh ClientApp process per node: one round shows it all)
        "--secure-aggregation",
        "--timeout",
        str(round(work_limit(300))),
        "--out",
        out,
    )
    assert result.code == 0, result.err + result.out
    assert "secure aggregation (SecAgg+)" in result.out and "round   1/1  clients   3" in result.out
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["secure"]["secagg_clients"] for r in rounds] == [3]
    assert all(0 < r["secure"]["secagg_bound"] < 1e-3 and r["secure"]["clipped"] == 0 for r in rounds)
    assert json.loads((out / "metrics.json").read_text())["secure_aggregation"]["threshold"] == 2
    _no_processes_left(out / "deployment")


@pytest.mark.slow
def test_an_unregistered_node_is_refused(tmp_path, exported):
    with LocalDeployment(tmp_path / "deployment") as deployment:
        deployment.start()
        known = deployment.add_node(exported / "client-000")
        stranger = deployment.add_node(exported / "client-001", register=False)
        deployment.start_node(known)
        deployment.start_node(stranger)
        deadline = time.monotonic() + work_limit(60)
        while deployment.node_running(stranger) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not deployment.node_running(stranger), "an unregistered SuperNode was let in"
        assert "Failed to activate SuperNode" in deployment.processes.log_tail(stranger.name, 40)
        nodes = deployment.connected_nodes()
        while not any(n["status"] == "online" for n in nodes) and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = deployment.connected_nodes()
        assert len(nodes) == 1 and nodes[0]["status"] == "online"  # the registered node, and only it
    _no_processes_left(tmp_path / "deployment")


@pytest.mark.slow
def test_a_killed_node_leaves_its_round_to_the_others_and_its_epsilon_never_drops_after_a_restart(tmp_path, exported):
    """Node 1 dies after round 1; round 2 finishes with node 0; node 1 restarts (fresh process, empty
    context.state) and trains again in round 3 from its ledger file: its ε continues from round 1's, never lower."""
    two = tmp_path / "clients"
    export_partitions(TINY.replace(clients=2).data, two)
    # The server holds only the item vocabulary (the export's server folder): clients evaluate their own users.
    # clients-per-round 2: each round waits (up to 2 minutes) for both nodes, so round 3 waits for the restart.
    cfg = DP_TINY.replace(
        data=str(two / "server"),
        evaluation="federated",
        eval_every=3,
        clients=2,
        rounds=3,
        clients_per_round=2,
        min_clients=1,
        out=str(tmp_path / "run"),
    )
    folder = tmp_path / "deployment"
    events: dict[str, float] = {}
    with LocalDeployment(folder) as deployment:
        deployment.start()
        nodes = [deployment.add_node(two / f"client-00{i}") for i in range(2)]
        for node in nodes:
            deployment.start_node(node)
        ledger = nodes[1].ledger

        def watch(line: str) -> None:
            text = progress_line(line) or ""
            if text.startswith("round   1/3") and "killed" not in events:
                events["epsilon_before"] = PrivacyLedger.load(ledger).epsilon()
                deployment.kill_node(nodes[1])
                events["killed"] = time.monotonic()
            elif text.startswith("round   2/3") and "restarted" not in events:
                deployment.start_node(nodes[1])
                events["restarted"] = time.monotonic()

        code = deployment.run_app(write_app(folder / "app", cfg.to_run_config()), watch, timeout=work_limit(240))
    _no_processes_left(folder)
    assert code == 0 and {"killed", "restarted"} <= set(events)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients"] for r in rounds] == [2, 1, 2]  # round 2 finished without the dead node; it came back
    assert rounds[1]["failed"] == ["client 1"]
    assert rounds[2]["valid"]["NDCG@10"] > 0  # evaluated by the clients: the server has no user's events
    after = PrivacyLedger.load(ledger)
    assert [r.round for r in after.records] == [1, 3]
    assert after.epsilon() > events["epsilon_before"]  # composed over both rounds, not restarted from zero
    records = [r.mechanism() for r in after.records]
    assert after.epsilon() == pytest.approx(independent_epsilons(records, after.delta)[0], rel=0.01)
    report = json.loads((tmp_path / "run" / "privacy_report.json").read_text())
    client = next(c for c in report["clients"] if c["client"] == "1")
    assert client["epsilon"] == pytest.approx(after.epsilon()) and client["rounds_trained"] == 2
    largest = [h["max_epsilon"] for h in report["history"]]
    assert largest == sorted(largest)


@pytest.mark.slow
def test_deploy_local_leaves_nothing_running_when_interrupted(tmp_path):
    """Ctrl-C (SIGINT) in the middle of a run: every process goes, exit code 130."""
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "fedseqrec.cli",
        "deploy",
        "local",
        *TINY_FLAGS,
        "--clients",
        "2",
        "--rounds",
        "20",
        "--out",
        str(out),
    ]
    # Ctrl-C's default disposition in the child even when pytest runs as a background job (`cmd &` in a script starts
    # it with SIGINT ignored, the child inherits that, and Python then installs no KeyboardInterrupt handler).
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in process.stdout:
        if "clients connected" in line:  # the run has started on the deployment
            break
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=work_limit(60))[0]
    assert process.returncode == 130, rest
    _no_processes_left(out / "deployment")


def test_deploy_local_refuses_bad_options_before_starting_anything(tmp_path, cli):
    earlier = tmp_path / "earlier"
    (earlier / "deployment" / "node-0").mkdir(parents=True)
    result = cli("deploy", "local", *TINY_FLAGS, "--out", earlier)
    assert result.code == 2 and "earlier attempt" in result.err
    both = cli("deploy", "local", *TINY_FLAGS, "--tls", "--insecure", "--out", tmp_path / "x")
    assert both.code == 2 and "not allowed with argument" in both.err
    bad = cli("deploy", "local", *TINY_FLAGS, "--rounds", "0", "--out", tmp_path / "y")
    assert bad.code == 2 and "--rounds must be a positive integer" in bad.err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_an_exported_folder_cannot_find_the_public_users(exported):
    app = make_client_app()
    context = Context(
        run_id=1, node_id=7, node_config={"data-path": str(exported / "client-002")}, state=RecordDict(), run_config={}
    )
    cfg = TINY.replace(mechanism="user-level", users_per_round=40, noise_multiplier=1.0, public_users=0.1)
    model = build_global_model(load_client_data(TINY, 2, 3).sequences, TINY.model)
    config = ConfigRecord(
        {
            **cfg.to_run_config(),
            "server-round": 1,
            "user-rate": 0.3,
            "noise-share-std": 0.0,
            "clip-norm": 1.0,
            "count-noise-share-std": 0.0,
        }
    )
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config})
    reply = app(Message(content, dst_node_id=7, message_type=MessageType.TRAIN), context)
    assert reply.has_error() and "renumbers its users" in reply.error.reason  # a refusal of one line
