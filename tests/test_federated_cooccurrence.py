"""`--model cooc` in a federation: every silo adds up its own users, the server adds up the silos and releases once
— the same sums, and the same model, as `fedseqrec train` computes from every user in one process."""

import json
import math
from uuid import uuid4

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from helpers import TINY, TINY_FLAGS, client_context, independent_epsilons
from scipy import sparse

from fedseqrec.client.client_app import make_client_app
from fedseqrec.errors import RunError
from fedseqrec.federated.task import cached_dataset
from fedseqrec.models.config import ModelConfig
from fedseqrec.models.cooccurrence import ItemCooccurrence, pair_table
from fedseqrec.privacy.cooccurrence import clipped_pair_sum, public_pairs, support_pair_sum
from fedseqrec.privacy.item_selection import item_counts
from fedseqrec.results.folder import RunFolder
from fedseqrec.server import cooccurrence as server_cooccurrence
from fedseqrec.server.cooccurrence import CooccurrenceRelease
from fedseqrec.server.loop import Progress
from fedseqrec.server.secure_aggregation import SecAggSettings, most_levels

COOC = TINY.replace(model="cooc")


class LoopbackGrid:
    """Flower's grid with every node's ClientApp called in this process (``tamper`` may change a node's replies)."""

    def __init__(self, cfg, tamper=None):
        self.cfg, self.app, self.tamper = cfg, make_client_app(), tamper or (lambda node, reply: reply)
        self.nodes = {partition + 10: partition for partition in range(cfg.data.clients)}
        self.contexts: dict[int, Context] = {node: client_context(cfg, p) for node, p in self.nodes.items()}
        self.asked: list[str] = []
        self.stages: list[str] = []  # the SecAgg+ stage of each message that had one
        self.replies: list[Message] = []

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())  # as the SuperLink sets it
            node = message.metadata.dst_node_id
            self.asked.append(message.metadata.message_type)
            secagg = message.content.config_records.get(RECORD_KEY_CONFIGS)
            if secagg is not None:
                self.stages.append(str(secagg[Key.STAGE]))
            reply = self.tamper(node, self.app(message, self.contexts[node]))
            if reply is not None:  # None: the node dropped out
                replies.append(reply)
                self.replies.append(reply)
        return replies


def release(tmp_path, cfg, tamper=None) -> tuple[dict, RunFolder, LoopbackGrid]:
    cfg = cfg.replace(out=str(tmp_path / "run")).planned()
    folder = RunFolder.create(tmp_path / "run", cfg)
    grid = LoopbackGrid(cfg, tamper)
    try:
        return CooccurrenceRelease(grid, cfg, folder, Progress(on_message=lambda text: None)).run(), folder, grid
    finally:
        folder.release()


def every_user(ds):
    return np.arange(1, ds.sequences.n_users + 1)


def ask(app, phase: str, partition: int, arrays: dict | None = None, cfg=COOC) -> dict[str, np.ndarray]:
    """One silo's answer to the server's query for ``phase``."""
    content = {"config": ConfigRecord({**cfg.to_run_config(), "cooc-phase": phase})}
    if arrays:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    message = Message(RecordDict(content), dst_node_id=1, message_type="query.cooccurrence")
    reply = app(message, client_context(cfg, partition))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return {name: value.numpy() for name, value in reply.content["arrays"].items()}


def test_the_silos_sums_add_up_to_every_users():
    app, ds = make_client_app(), cached_dataset(TINY.data)
    seq, split = ds.sequences, ds.split
    chosen = np.arange(2, seq.n_items + 1, 3)
    items = sum(ask(app, "items", p)["counts"] for p in range(3))
    assert np.allclose(items, item_counts(seq, split, every_user(ds)))
    pairs = sum(ask(app, "pairs", p, {"chosen": chosen})["pairs"] for p in range(3))
    whole, _ = clipped_pair_sum(seq, split, every_user(ds), chosen, 5)
    assert np.allclose(pairs, whole[np.triu_indices(len(chosen), k=1)])
    size = seq.n_items + 1
    counted = [ask(app, "counted", p) for p in range(3)]
    silos = sum(sparse.coo_matrix((c["value"], (c["first"], c["second"])), shape=(size, size)) for c in counted)
    histories = [seq.sequence(u)[: split.train_end[u]] for u in every_user(ds)]
    table = pair_table(histories, 5, size)
    assert abs(silos - table).max() < 1e-9 and table.nnz > 100
    # with a quarter of the users public: the others' clipped pairs over the pairs the public users hold
    public = public_pairs(seq, split, 0.25, TINY.data.seed, 5)
    shared = COOC.replace(cooc_epsilon=4.0, cooc_public_users=0.25)
    support = sum(ask(app, "support", p, {"keys": public.keys}, shared)["pairs"] for p in range(3))
    others = np.setdiff1d(every_user(ds), public.users)
    assert np.allclose(support, support_pair_sum(seq, split, others, public.keys, 5)[0]) and support.sum() > 0


def test_a_federation_counts_the_model_one_process_counts(tmp_path):
    results, folder, grid = release(tmp_path, COOC)
    ds = cached_dataset(TINY.data)
    seq, split = ds.sequences, ds.split
    histories = [seq.sequence(u)[: split.train_end[u]] for u in every_user(ds)]
    prior = np.bincount(np.concatenate([h[h > 0] for h in histories]), minlength=seq.n_items + 1) * 1e-6
    alone = ItemCooccurrence.counted(ModelConfig(name="cooc", n_items=seq.n_items), histories, 5, prior)
    saved = torch.load(folder.path / "model.pt", weights_only=True)
    for key in ("first", "second", "value", "prior"):
        assert np.allclose(saved[key].numpy(), getattr(alone, key).numpy()), key
    assert results["rounds_run"] == 1 and "privacy" not in results
    assert set(grid.asked) == {"query", "query.cooccurrence"}  # who is who, then the counts: no training round
    assert json.loads((folder.path / "model_info.json").read_text())["round"] == 1


def test_a_private_federated_release_records_and_rechecks_its_two_releases(tmp_path):
    results, folder, _ = release(tmp_path, COOC.replace(cooc_epsilon=4.0, cooc_items=30))
    report = json.loads((folder.path / "privacy_report.json").read_text())
    records = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in report["ledger"]]
    assert len(records) == 2 and report["item_selection"]["count"] == 30 and report["silos"] == 3
    rdp, pld = independent_epsilons(records, report["delta"])
    assert report["max_epsilon"] <= 4.0 * 1.001 and report["max_epsilon"] == pytest.approx(rdp, rel=0.01)
    assert report["max_epsilon"] >= pld * 0.99 and report["flags"] == []
    assert "the server sees every silo's exact sum" in report["trust"]
    assert "- ε of the release (one ledger for every user): " in (folder.path / "summary.md").read_text()
    assert (folder.path / "privacy_report.md").exists() and results["privacy"]["max_epsilon"] == report[
        "epsilon_reported"
    ]


def test_a_federation_releases_over_the_public_users_pairs_beside_their_model(tmp_path):
    results, folder, _ = release(tmp_path, COOC.replace(cooc_epsilon=4.0, cooc_public_users=0.25))
    report = json.loads((folder.path / "privacy_report.json").read_text())
    ds = cached_dataset(TINY.data)
    public = public_pairs(ds.sequences, ds.split, 0.25, TINY.data.seed, 5)
    assert report["public_users"]["count"] == len(public.users) == 30 and len(report["ledger"]) == 1
    assert report["released_pairs"] == len(public.keys) and report["max_epsilon"] <= 4.0 * 1.001
    saved = torch.load(folder.path / "model.pt", weights_only=True)
    assert np.array_equal(saved["first"].numpy(), public.first) and np.array_equal(
        saved["second"].numpy(), public.second
    )
    assert set(results["initial"]) == {"valid", "test"}  # the public users' model alone, beside the release


def test_a_secure_release_adds_the_silos_sums_under_secagg_and_noises_the_quantised_sensitivity(tmp_path, monkeypatch):
    """Under SecAgg+ the server gets masked vectors only, yet adds up what every user's sums add up to (within the
    quantisation), and its noise is scaled to the quantised sum's sensitivity: the ledger's ε stays exact."""
    seen = {}

    def keep(name, function):
        def kept(*args, **kwargs):
            seen[name] = args
            return function(*args, **kwargs)

        monkeypatch.setattr(server_cooccurrence, name, kept)

    keep("choose_items", server_cooccurrence.choose_items)
    keep("release_pairs", server_cooccurrence.release_pairs)
    results, folder, grid = release(tmp_path, COOC.replace(cooc_epsilon=4.0, cooc_items=30, secure_aggregation=True))
    ds = cached_dataset(TINY.data)
    seq, split = ds.sequences, ds.split
    levels, step = most_levels(3), 2 * 1024.0 / most_levels(3)
    assert levels == 2**30 and grid.stages.count(Stage.UNMASK) == 6  # two sums, three silos each
    assert not any("arrays" in reply.content for reply in grid.replies)  # no silo's sum in the clear
    counts = seen["choose_items"][0]
    assert np.abs(counts - item_counts(seq, split, every_user(ds))).max() <= 3 * step
    choice, total = seen["release_pairs"][:2]
    whole, _ = clipped_pair_sum(seq, split, every_user(ds), choice.chosen, 5)
    assert np.abs(np.triu(total - whole, k=1)).max() <= 3 * step and whole.sum() > 10
    report = json.loads((folder.path / "privacy_report.json").read_text())
    pairs, items = 30 * 29 // 2, seq.n_items + 1
    assert report["sensitivity_l2"] == pytest.approx(1 + math.sqrt(pairs) * step) and report["sensitivity_l2"] > 1
    assert report["item_selection"]["sensitivity_l2"] == pytest.approx(1 + math.sqrt(items) * step)
    assert seen["release_pairs"][7] == report["sensitivity_l2"]  # the noise the release drew is σ times it
    records = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in report["ledger"]]
    assert report["max_epsilon"] == pytest.approx(independent_epsilons(records, report["delta"])[0], rel=0.01)
    assert "never one silo's sum" in report["trust"]
    assert results["privacy"]["secure_aggregation"]["quantisation_levels"] == levels


def test_a_secure_release_over_the_public_users_pairs_adds_the_others_sums(tmp_path, monkeypatch):
    seen = {}
    release_on_public_pairs = server_cooccurrence.release_on_public_pairs

    def kept(*args, **kwargs):
        seen["args"] = args
        return release_on_public_pairs(*args, **kwargs)

    monkeypatch.setattr(server_cooccurrence, "release_on_public_pairs", kept)
    cfg = COOC.replace(cooc_epsilon=4.0, cooc_public_users=0.25, secure_aggregation=True)
    _, folder, grid = release(tmp_path, cfg)
    ds = cached_dataset(TINY.data)
    public = public_pairs(ds.sequences, ds.split, 0.25, TINY.data.seed, 5)
    others = np.setdiff1d(every_user(ds), public.users)
    exact, _ = support_pair_sum(ds.sequences, ds.split, others, public.keys, 5)
    assert np.abs(seen["args"][1] - exact).max() <= 3 * 2 * 1024.0 / most_levels(3) and exact.sum() > 1
    assert grid.stages.count(Stage.UNMASK) == 3 and not any("arrays" in r.content for r in grid.replies)
    report = json.loads((folder.path / "privacy_report.json").read_text())
    assert report["sensitivity_l2"] == pytest.approx(1 + math.sqrt(len(public.keys)) * 2 * 1024.0 / most_levels(3))


def test_a_secure_release_says_when_its_quantisation_adds_much_noise(tmp_path, monkeypatch):
    levels = 2**16  # few levels: a coarse grid, a larger sensitivity

    def settings(cfg, clients, warn):
        return SecAggSettings(None, 0.6, 1024.0, 1, clients, levels)

    monkeypatch.setattr(server_cooccurrence, "release_settings", settings)
    cfg = COOC.replace(cooc_epsilon=4.0, cooc_items=30, secure_aggregation=True, out=str(tmp_path / "run")).planned()
    folder, said = RunFolder.create(tmp_path / "run", cfg), []
    try:
        CooccurrenceRelease(LoopbackGrid(cfg), cfg, folder, Progress(on_message=said.append)).run()
    finally:
        folder.release()
    sizes = (cached_dataset(TINY.data).sequences.n_items + 1, 30 * 29 // 2)  # the item counts, then the pairs
    raised = [math.sqrt(size) * 2 * 1024.0 / levels for size in sizes]
    assert all(r > 0.05 for r in raised)
    assert [m for m in said if "raises the noise" in m] == [
        f"secure aggregation's quantisation raises the noise on {size:,} values by {r:.1%}: a smaller "
        "--secagg-clipping-range than 1024 lowers it (values above it are clipped)"
        for size, r in zip(sizes, raised, strict=True)
    ]


def test_a_silo_dropping_out_of_a_secure_release_stops_it_before_anything_is_unmasked(tmp_path):
    def drop(node, reply):
        config = reply.content.config_records.get(RECORD_KEY_CONFIGS) if not reply.has_error() else None
        return None if node == 11 and config is not None and Key.MASKED_PARAMETERS in config else reply

    with pytest.raises(RunError, match=r"co-occurrence items: clients \[1\] did not answer"):
        release(tmp_path, COOC.replace(cooc_epsilon=4.0, cooc_items=30, secure_aggregation=True), drop)


@pytest.mark.parametrize(
    "change",
    [lambda v: -v, lambda v: v[:-1], lambda v: np.where(v > 0, np.inf, v)],
    ids=["negative counts", "a shorter vector", "not finite"],
)
def test_a_silo_whose_sums_cannot_be_counts_stops_the_release(tmp_path, change):
    def tamper(node, reply):
        if node != 11 or reply.has_error() or "arrays" not in reply.content:
            return reply
        arrays = ArrayRecord({k: Array(change(v.numpy())) for k, v in reply.content["arrays"].items()})
        reply.content = RecordDict({"arrays": arrays, "metrics": reply.content["metrics"]})
        return reply

    with pytest.raises(RunError, match="co-occurrence items: client 1 sent .* expected .* finite counts ≥ 0"):
        release(tmp_path, COOC.replace(cooc_epsilon=4.0, cooc_items=30), tamper)


def test_a_silo_naming_pairs_outside_the_catalogue_stops_the_plain_count(tmp_path):
    def tamper(node, reply):
        if node == 12 and not reply.has_error() and "arrays" in reply.content and "second" in reply.content["arrays"]:
            arrays = {k: v.numpy() for k, v in reply.content["arrays"].items()}
            arrays["second"] = arrays["second"] + 1000
            record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
            reply.content = RecordDict({"arrays": record, "metrics": reply.content["metrics"]})
        return reply

    with pytest.raises(RunError, match="co-occurrence counted: client 2 sent pairs outside the catalogue"):
        release(tmp_path, COOC, tamper)


def test_a_release_is_not_resumed(cli, tmp_path):
    release(tmp_path, COOC.replace(cooc_epsilon=4.0, cooc_items=30))
    result = cli("simulate", "--resume", tmp_path / "run")
    assert result.code == 2 and "is one release, not rounds; start a new run" in result.err
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1  # nothing drawn again


@pytest.mark.parametrize(
    ("flags", "refusal"),
    [
        (["--privacy", "user-level", "--epsilon", "8"], "does not combine with --privacy user-level"),
        (["--clients-per-round", "2"], "does not combine with --clients-per-round"),
        (["--cooc-public-users", "0.1"], "without --cooc-epsilon nothing is private"),
        (["--secure-aggregation"], "does not combine with --secure-aggregation without --cooc-epsilon"),
    ],
)
def test_options_of_training_rounds_are_refused_with_a_counted_model(cli, tmp_path, flags, refusal):
    result = cli("simulate", *TINY_FLAGS, "--model", "cooc", *flags, "--out", tmp_path / "run")
    assert result.code == 2 and refusal in result.err and "Traceback" not in result.err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_simulate_releases_under_secagg_through_flowers_engine(cli, tmp_path):
    """The two sums go to the simulated SuperNodes as train messages behind Flower's secaggplus_mod, and back masked."""
    out = tmp_path / "sim"
    flags = ["--model", "cooc", "--cooc-epsilon", "4", "--cooc-items", "30", "--secure-aggregation"]
    result = cli("simulate", *TINY_FLAGS, *flags, "--out", out)
    assert result.code == 0, result.err
    privacy = json.loads((out / "metrics.json").read_text())["privacy"]
    phases = privacy["secure_aggregation"]["phases"]
    assert set(phases) == {"items", "pairs"} and all(p["secagg_clients"] == 3 for p in phases.values())
    assert privacy["max_epsilon"] <= 4.0 * 1.001 and privacy["sensitivity_l2"] > 1
    assert (
        "(pairs); a record's noise is its multiplier times it (above 1: SecAgg+"
        in (out / "privacy_report.md").read_text()
    )


@pytest.mark.slow
def test_simulate_releases_the_model_through_flower_and_the_folder_serves_it(cli, tmp_path):
    out = tmp_path / "sim"
    result = cli("simulate", *TINY_FLAGS, "--model", "cooc", "--cooc-epsilon", "4", "--cooc-items", "30", "--out", out)
    assert result.code == 0, result.err
    assert "released round 1 of 1" in result.out and "round   1/1" in result.out
    metrics = json.loads((out / "metrics.json").read_text())
    again = json.loads(cli("evaluate", "--checkpoint", out, "--json").out)
    assert again["test"]["NDCG@10"] == pytest.approx(metrics["test"]["NDCG@10"])
    report = cli("report", out)
    assert report.code == 0 and "one release over every silo's users" in report.out
    recommended = cli("recommend", out, "--user", "u000003")
    assert recommended.code == 0 and len(json.loads(recommended.out)["items"]) == 10, recommended.err


@pytest.mark.slow
def test_deployed_silos_count_from_their_exported_folders_what_one_process_counts(cli, tmp_path):
    """Real SuperLink and SuperNode processes, each node reading only its own exported folder: the counted model
    is the one every user gives in one process (exported partitions keep the item ids)."""
    out = tmp_path / "deployed"
    result = cli("deploy", "local", *TINY_FLAGS, "--model", "cooc", "--insecure", "--out", out)
    assert result.code == 0, result.err
    trained = tmp_path / "trained"
    assert TINY_FLAGS[:2] == ["--clients", "3"]
    assert cli("train", *TINY_FLAGS[2:], "--model", "cooc", "--out", trained).code == 0  # every user, one process
    deployed, alone = (torch.load(folder / "model.pt", weights_only=True) for folder in (out, trained))
    for key in ("first", "second", "value", "prior"):
        assert np.allclose(deployed[key].numpy(), alone[key].numpy()), key
    assert json.loads((out / "metrics.json").read_text())["test"] == pytest.approx(
        json.loads((trained / "metrics.json").read_text())["test"]
    )
