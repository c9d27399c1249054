"""`fedseqrec data download`, against an HTTP server on this machine (never the internet): files written only
when their checksum holds, nothing half-written, the real datasets byte for byte."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
from conftest import real_dataset

from fedseqrec.data import download as downloads


@pytest.fixture
def mirror(tmp_path):
    """A folder served on 127.0.0.1 (a thread of this process, stopped when the test ends)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def tiny_dataset(monkeypatch):
    content = b"1 1 2 3\n2 2 3 4\n"
    remote = downloads.RemoteFile("tiny.txt", "unused", hashlib.sha256(content).hexdigest())
    monkeypatch.setitem(downloads.DATASETS, "tiny", downloads.PublicDataset((remote,), "test terms"))
    return content


def test_a_dataset_is_downloaded_and_checked(mirror, tiny_dataset, tmp_path):
    served, url = mirror
    (served / "tiny").mkdir()
    (served / "tiny" / "tiny.txt").write_bytes(tiny_dataset)
    said = []
    folder = downloads.download("tiny", tmp_path / "data", url, said.append)
    assert (folder / "tiny.txt").read_bytes() == tiny_dataset and "checksum verified" in said[-1]
    downloads.download("tiny", tmp_path / "data", url, said.append)  # again: kept, not fetched
    assert "already there" in said[-1]


def test_a_file_with_another_checksum_is_refused_and_nothing_is_written(cli, mirror, tiny_dataset, tmp_path):
    served, url = mirror
    (served / "tiny").mkdir()
    (served / "tiny" / "tiny.txt").write_bytes(tiny_dataset + b"3 9\n")
    result = cli("data", "download", "tiny", "--out", tmp_path / "data", "--mirror", url)
    assert result.code == 2 and "SHA-256" in result.err and "nothing written" in result.err
    assert list((tmp_path / "data" / "tiny").iterdir()) == []


def test_an_unreachable_source_is_one_line(cli, tiny_dataset, tmp_path):
    result = cli("data", "download", "tiny", "--out", tmp_path / "data", "--mirror", "http://127.0.0.1:9")
    assert result.code == 2 and "could not download" in result.err and "Traceback" not in result.err


@pytest.mark.parametrize("name", ["ml-100k", "amazon-beauty"])
def test_the_real_datasets_are_what_the_project_is_measured_on(cli, mirror, name, tmp_path):
    """The published checksums are those of the copies in the data directory (served here as the source would)."""
    local = real_dataset(f"{name}/{downloads.DATASETS[name].files[0].name}", name).parent
    served, url = mirror
    (served / name).symlink_to(local)
    result = cli("data", "download", name, "--out", tmp_path / "data", "--mirror", url)
    assert result.code == 0, result.err
    for remote in downloads.DATASETS[name].files:
        assert (tmp_path / "data" / name / remote.name).read_bytes() == (local / remote.name).read_bytes()
    assert f"FEDSEQREC_DATA_DIR={Path(tmp_path / 'data').resolve()}" in result.out
