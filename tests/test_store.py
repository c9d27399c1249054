"""The prepared format: round trip, idempotent bytes, atomic replacement, versioning."""

import json

import numpy as np
import pytest

from fedseqrec.data import DataConfig, ShopConfig, load_dataset
from fedseqrec.data.prepare import prepare
from fedseqrec.data.store import FORMAT_VERSION, MANIFEST, load_prepared
from fedseqrec.errors import DataError, UserError

CFG = DataConfig(shop=ShopConfig(users=120, items=80, categories=6), partition="iid", clients=4, seed=5)


def folder_bytes(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_round_trip(tmp_path):
    out = tmp_path / "prepared"
    stats = prepare(CFG, out)
    original = load_dataset(CFG)
    manifest, seq, split, part = load_prepared(out)
    assert manifest["version"] == FORMAT_VERSION and manifest["counts"]["users"] == stats["users"] == 120
    for name in ("offsets", "items", "events", "timestamps", "queries"):
        assert np.array_equal(getattr(seq, name), getattr(original.sequences, name)), name
    for name in ("users", "items", "events", "queries"):
        assert getattr(seq.vocab, name).tolist() == getattr(original.sequences.vocab, name).tolist()
    assert seq.item_features.equals(original.sequences.item_features)
    assert seq.user_features.equals(original.sequences.user_features)
    assert np.array_equal(split.test_pos, original.split.test_pos)
    assert np.array_equal(part.client_of_user, original.partition.client_of_user)
    assert json.loads((out / "stats.json").read_text())["interactions"] == seq.n_interactions


def test_prepared_folder_loads_as_data(tmp_path):
    out = tmp_path / "p"
    prepare(CFG, out)
    again = load_dataset(DataConfig(data=str(out), partition="iid", clients=4, seed=5))
    assert again.format == "prepared"
    assert np.array_equal(again.partition.client_of_user, load_dataset(CFG).partition.client_of_user)
    other = load_dataset(DataConfig(data=str(out), partition="iid", clients=3, seed=5))
    assert other.partition.n_clients == 3  # a different request recomputes the partition
    with pytest.raises(UserError, match="already cleaned"):
        load_dataset(DataConfig(data=str(out), user_core=5))


def test_rerun_is_idempotent_and_replaces_atomically(tmp_path):
    out = tmp_path / "p"
    prepare(CFG, out)
    first = folder_bytes(out)
    prepare(CFG, out)
    assert folder_bytes(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temporary or backup folders left


def test_failed_prepare_leaves_existing_output_untouched(tmp_path):
    out = tmp_path / "p"
    prepare(CFG, out)
    before = folder_bytes(out)
    with pytest.raises(UserError):
        prepare(DataConfig(shop=CFG.shop, partition="iid", clients=10_000), out)
    assert folder_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a fedseqrec prepared dataset"):
        prepare(CFG, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_unsupported_version_is_refused(tmp_path):
    out = tmp_path / "p"
    prepare(CFG, out)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["version"] = FORMAT_VERSION + 1
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="version"):
        load_prepared(out)
