"""The run folder's one reader: what a run was given is what evaluate, recommend, serve and audit rebuild, from
any working folder, and on the recorded data only."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace

import pytest
from helpers import TINY

from fedseqrec.cli.train import checkpoint_data
from fedseqrec.data.dataset import DataConfig
from fedseqrec.data.record import fingerprint
from fedseqrec.data.shop import ShopConfig
from fedseqrec.errors import UserError
from fedseqrec.federated.config import RunConfig
from fedseqrec.results.folder import RunFolder, recorded_data

# Every option of the data, away from its default (partition and clients: a federation's; the reader gives the
# whole dataset). A new option fails the test below until it is listed here.
NOT_DEFAULT = {
    "format": "csv",
    "seed": 3,
    "task": "search",
    "columns": "user=u,item=i,timestamp=t",
    "sep": ";",
    "time_unit": "s",
    "min_rating": 3.5,
    "k_core": 5,
    "user_core": 4,
    "item_core": 2,
    "split": "temporal",
    "valid_quantile": 0.7,
    "test_quantile": 0.85,
    "alpha": 0.1,
    "attribute": "region",
    "category": "genre",
    "fake_users": 0.05,
    "target_item": "i7",
    "audit_canaries": 20,
    "audit_users": 10,
    "audit_seed": 99,
}
SHOP_NOT_DEFAULT = {"users": 300, "items": 120, "categories": 7, "days": 30}  # the generator's options
WHOLE = ("data", "partition", "clients", "max_len", "shop")  # set by the test, or not a run's option


def test_every_data_option_is_in_the_round_trip():
    assert set(NOT_DEFAULT) | set(WHOLE) == {f.name for f in fields(DataConfig)}
    assert set(SHOP_NOT_DEFAULT) == {f.name for f in fields(ShopConfig) if "option" in f.metadata}


def _given(data: str) -> DataConfig:
    return DataConfig(data=data, shop=ShopConfig(**SHOP_NOT_DEFAULT), **NOT_DEFAULT)


def test_a_federated_run_folder_gives_back_every_data_option(tmp_path):
    """(`--k-core 5` came back as 0 and `--shop-users 300` as 1000 when the federated run config was read as a
    centralized one.)"""
    cfg = replace(RunConfig(), data=replace(_given("shop"), partition="iid", clients=3))
    folder = RunFolder.create(tmp_path / "run", cfg)
    folder.release()
    whole = replace(cfg.data, partition=None, clients=None)
    assert recorded_data(tmp_path / "run") == whole
    assert checkpoint_data(tmp_path / "run", argparse.Namespace()) == whole  # what `evaluate` rebuilds
    assert RunFolder(tmp_path / "run").config() == cfg


def test_a_centralized_run_folder_gives_back_every_data_option(tmp_path):
    from fedseqrec.centralized.config import TrainConfig
    from fedseqrec.centralized.training import _write_results
    from fedseqrec.models.config import ModelConfig

    given = _given("shop")
    _write_results(tmp_path / "run", {}, given, ModelConfig(), TrainConfig(), n_items=100)
    assert recorded_data(tmp_path / "run") == given


@pytest.fixture
def trained(cli, tmp_path, monkeypatch):
    """A model trained on a CSV log given by a relative path, from the folder the log is in."""
    rows = ["user_id,item_id,timestamp"] + [
        f"u{u},i{(u * 3 + k * 7) % 40},{1000 + 10 * k}" for u in range(60) for k in range(12)
    ]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    result = cli(
        "train",
        "--data",
        "log.csv",
        "--epochs",
        "1",
        "--hidden",
        "16",
        "--layers",
        "1",
        "--heads",
        "1",
        "--inner",
        "32",
        "--out",
        "run",
    )
    assert result.code == 0, result.err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return tmp_path


def test_a_run_finds_its_data_from_any_working_folder(cli, trained):
    config = json.loads((trained / "run" / "config.json").read_text())
    assert config["data_record"] == {"path": str(trained / "log.csv"), "fingerprint": fingerprint("../log.csv")}
    assert recorded_data(trained / "run").data == str(trained / "log.csv")
    for command in (["evaluate", "--checkpoint", trained / "run"], ["recommend", trained / "run", "--user", "u1"]):
        result = cli(*command)
        assert result.code == 0, result.err


def test_data_given_elsewhere_is_taken_only_when_it_holds_the_same_files(cli, trained):
    copy = trained / "moved" / "renamed.csv"
    copy.parent.mkdir()
    copy.write_bytes((trained / "log.csv").read_bytes())
    assert recorded_data(trained / "run", str(copy)).data == str(copy)
    assert cli("evaluate", "--checkpoint", trained / "run", "--data", copy).code == 0
    copy.write_text(copy.read_text() + "u1,i2,99999\n")
    for command in (
        ["evaluate", "--checkpoint", trained / "run"],
        ["recommend", trained / "run", "--user", "u1"],
        ["audit", trained / "run"],
    ):
        result = cli(*command, "--data", copy)
        assert result.code == 2 and "not the data the run" in result.err and "Traceback" not in result.err
    with pytest.raises(UserError, match="trained on"):
        recorded_data(trained / "run", "shop")


def test_a_run_whose_data_is_gone_says_to_give_data(cli, trained):
    (trained / "log.csv").rename(trained / "gone.csv")
    result = cli("evaluate", "--checkpoint", trained / "run")
    assert result.code == 2 and "give its location with --data PATH" in result.err


def test_run_folders_without_a_data_record_are_still_read(tmp_path):
    """Schema 1 (fedseqrec 0.1): no data record, and the mechanism named by three switches."""
    values = TINY.to_run_config()
    values.pop("privacy")
    values.pop("central-norm")
    values.update({"dp": True, "user-dp": False, "central-dp": "", "noise-multiplier": 1.0})
    (tmp_path / "config.json").write_text(json.dumps({"fedseqrec": "0.1.0", "run_config": values}))
    assert recorded_data(tmp_path).shop == TINY.data.shop
    assert RunFolder(tmp_path).config().privacy.mechanism == "dp-sgd"


def test_a_folder_from_a_newer_fedseqrec_is_refused_with_a_line(tmp_path, cli):
    (tmp_path / "config.json").write_text(json.dumps({"schema": 99, "run_config": {}}))
    for command in (["evaluate", "--checkpoint", tmp_path], ["report", tmp_path], ["audit", tmp_path]):
        result = cli(*command)
        assert result.code == 2 and "newer fedseqrec" in result.err and "Traceback" not in result.err


def test_data_changed_since_the_run_is_refused(cli, trained):
    (trained / "log.csv").write_text((trained / "log.csv").read_text() + "u1,i2,99999\n")
    for command in (["evaluate", "--checkpoint", trained / "run"], ["recommend", trained / "run", "--user", "u1"]):
        result = cli(*command)
        assert result.code == 2 and "no longer holds the files the run was trained on" in result.err


def test_the_http_service_takes_the_runs_data_from_elsewhere_and_refuses_other_data(trained):
    from fastapi.testclient import TestClient

    from fedseqrec.serving.app import make_app

    copy = trained / "copy.csv"
    copy.write_bytes((trained / "log.csv").read_bytes())
    (trained / "log.csv").unlink()
    with TestClient(make_app(trained / "run", poll_seconds=60, data=str(copy))) as service:
        assert service.post("/recommend", json={"history": ["i1", "i2"], "k": 3}).status_code == 200
    copy.write_text(copy.read_text() + "u1,i2,99999\n")
    with pytest.raises(UserError, match="not the data the run"):
        make_app(trained / "run", data=str(copy))


def test_a_released_folder_is_free_though_a_child_forked_while_it_was_held(tmp_path):
    import os
    import signal

    from fedseqrec.results.folder import RunFolder

    held = RunFolder(tmp_path).lock()
    child = os.fork()  # (Ray and others fork helpers; the child keeps a copy of every descriptor)
    if child == 0:
        signal.pause()
        os._exit(0)
    try:
        held.release()
        RunFolder(tmp_path).lock().release()  # refused with "in use" if the child's copy still held the lock
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
