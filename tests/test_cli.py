"""The fedseqrec command: help, stats, prepare, and every bad-input case (one line, exit 2, nothing written)."""

import json
import subprocess
import sys

import pytest
from conftest import write


def test_prepare_help_shows_defaults(cli):
    out = " ".join(cli("data", "prepare", "--help").out.split())
    assert "--data NAME_OR_PATH" in out and "(default: shop)" in out and "--out DIR" in out


def test_stats_on_ml100k_json(cli, ml100k):
    result = cli("data", "stats", "--data", ml100k, "--json")
    assert result.code == 0, result.err
    stats = json.loads(result.out)
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100_000)
    assert (stats["split"]["valid_targets"], stats["split"]["test_targets"]) == (943, 943)
    assert stats["sequence_length"]["p0"] == 20


def test_stats_on_shop_with_partition(cli):
    result = cli("data", "stats", "--shop-users", 200, "--partition", "iid", "--clients", 4, "--json")
    stats = json.loads(result.out)
    assert result.code == 0 and stats["users"] == 200
    assert [c["users"] for c in stats["clients"]] == [50, 50, 50, 50]
    assert sum(c["interactions"] for c in stats["clients"]) == stats["interactions"]
    assert set(stats["events"]) == {"view", "cart", "purchase", "search"}


def test_stats_text_output(cli):
    result = cli("data", "stats", "--shop-users", 100, "--partition", "attribute")
    assert result.code == 0
    for word in ("users", "items", "interactions", "seq. length", "leave-one-out", "partition", "central"):
        assert word in result.out


def test_prepare_then_stats_from_folder(cli, tmp_path):
    out = tmp_path / "shop"
    prepared = cli("data", "prepare", "--shop-users", 150, "--out", out, "--max-len", 10)
    assert prepared.code == 0
    # what cleaning removed is said, not silent
    assert "cleaning      removed" in prepared.out and "before each user's most recent --max-len" in prepared.out
    stats = json.loads(cli("data", "stats", "--data", out, "--json").out)
    assert stats["users"] == 150 and stats["format"] == "prepared"
    assert stats["sequence_length"]["p100"] <= 10


def test_installed_entry_point_and_debug_traceback(tmp_path):
    missing = str(tmp_path / "nope.csv")
    plain = subprocess.run(
        [sys.executable, "-m", "fedseqrec.cli", "data", "stats", "--data", missing], capture_output=True, text=True
    )
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().count("\n") == 0
    debug = subprocess.run(
        [sys.executable, "-m", "fedseqrec.cli", "--debug", "data", "stats", "--data", missing],
        capture_output=True,
        text=True,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr


# --- bad input: (files to write, extra arguments, words the one-line message must contain) ---
HEADER = "user,item,timestamp\n"
BAD_INPUT = {
    "missing file": ({}, ["--data", "{tmp}/absent.csv"], ["absent.csv", "no such file"]),
    "binary file": ({"bin.csv": b"user,item\x00\x01\x02"}, ["--data", "{tmp}/bin.csv"], ["bin.csv", "binary"]),
    "not utf-8": (
        {"latin.csv": "user,item,timestamp\nJosé,x,1\n".encode("latin-1")},
        ["--data", "{tmp}/latin.csv"],
        ["latin.csv", "UTF-8"],
    ),
    "missing column": (
        {"log.csv": "user,item,when\na,b,1\n"},
        ["--data", "{tmp}/log.csv", "--format", "csv"],
        ["log.csv", "'timestamp'", "'when'"],
    ),
    "misnamed mapped column": (
        {"log.csv": HEADER + "a,b,1\n"},
        ["--data", "{tmp}/log.csv", "--columns", "user=user,item=product,timestamp=timestamp"],
        ["log.csv", "'product'", "(for item)"],
    ),
    "undetectable layout": ({"log.csv": "a,b,c\n1,2,3\n"}, ["--data", "{tmp}/log.csv"], ["log.csv", "first line"]),
    "non-numeric timestamp": (
        {"log.csv": HEADER + "a,b,1\na,c,2\na,d,yesterday\n"},
        ["--data", "{tmp}/log.csv"],
        ["log.csv: line 4", "'timestamp'", "yesterday"],
    ),
    "impossible timestamp": (
        {"log.csv": HEADER + "a,b,1\na,c,-5\n"},
        ["--data", "{tmp}/log.csv"],
        ["line 3", "impossible timestamp", "-5"],
    ),
    "missing timestamp": ({"log.csv": HEADER + "a,b,\n"}, ["--data", "{tmp}/log.csv"], ["line 2", "missing"]),
    "non-numeric rating": (
        {"r.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\na\tb\tgood\t1\n"},
        ["--data", "{tmp}/r.inter"],
        ["r.inter: line 2", "'rating'", "good"],
    ),
    "untyped recbole header": (
        {"u.inter": "user_id\titem_id\ttimestamp\na\tb\t1\n"},
        ["--data", "{tmp}/u.inter"],
        ["u.inter", "line 1", "name:type"],
    ),
    "nothing left": (
        {"log.csv": HEADER + "a,b,1\na,c,2\n"},
        ["--data", "{tmp}/log.csv", "--k-core", "5"],
        ["nothing left", "k-core"],
    ),
    "unknown dataset": ({}, ["--data", "amazon"], ["unknown dataset 'amazon'", "shop"]),
    "unknown format": ({}, ["--format", "excel"], ["--format", "is not one of", "'excel'"]),
    "unknown partition": ({}, ["--partition", "random"], ["--partition", "is not one of"]),
    "unknown column role": (
        {"log.csv": HEADER + "a,b,1\n"},
        ["--data", "{tmp}/log.csv", "--columns", "person=user"],
        ["--columns", "unknown role 'person'"],
    ),
    "more clients than users": (
        {},
        ["--shop-users", "20", "--partition", "iid", "--clients", "21"],
        ["--clients 21", "20 users"],
    ),
    "empty file": ({"log.csv": ""}, ["--data", "{tmp}/log.csv", "--format", "csv"], ["log.csv", "empty"]),
    "folder without data": ({"dir/readme.txt": "hi"}, ["--data", "{tmp}/dir"], ["dir", "no known dataset"]),
    "bad shop size": ({}, ["--shop-items", "1"], ["shop", "items"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
@pytest.mark.parametrize("command", ["stats", "prepare"])
def test_bad_input(cli, tmp_path, case, command):
    files, args, words = BAD_INPUT[case]
    for name, content in files.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        else:
            write(path, content)
    out = tmp_path / "out"
    extra = ["--out", out] if command == "prepare" else []
    result = cli("data", command, *[a.format(tmp=tmp_path) for a in args], *extra)
    assert result.code == 2, result.err
    assert "Traceback" not in result.err and result.out == ""
    message = result.err.strip().splitlines()[-1]
    for word in words:
        assert word in message, (word, message)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_refusals_name_the_real_problem_in_one_line(cli, tmp_path):
    """Each used to end in an internal error, succeed, or blame the wrong thing (issue 29's probes)."""
    (tmp_path / "afile").write_text("")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "inf.csv").write_text("user_id,item_id,timestamp\nu1,i1,inf\nu1,i2,5\n")
    (tmp_path / "plain.csv").write_text("user_id,item_id,timestamp\nu1,i1,1\nu1,i2,5\n")
    cases = [
        (["deploy", "credentials", "--out", tmp_path / "afile"], "is a file, not a folder"),
        (["deploy", "credentials", "--out", tmp_path / "keys", "--nodes", "-3"], "--nodes -3: must be 0 or more"),
        (["data", "stats", "--data", tmp_path / "loop1"], "a symbolic link that leads nowhere"),
        (["data", "stats", "--data", tmp_path / "inf.csv"], "'inf' is not a time"),
        (["data", "stats", "--data", tmp_path / "plain.csv", "--format", "prepared"], "not a folder written by"),
        (["data", "stats", "--data", tmp_path / "plain.csv", "--format", "taobao"], "line 1 has 3 fields"),
    ]
    for args, expected in cases:
        result = cli(*args)
        assert result.code == 2 and expected in result.err, (args, result.err)
        assert len(result.err.strip().splitlines()) == 1 and "internal error" not in result.err
    assert not (tmp_path / "keys").exists()


def test_a_catalogue_no_larger_than_the_cut_off_is_said_to_measure_nothing(cli, tmp_path):
    lines = [f"u{u},i{(u + t) % 4},{t}" for u in range(30) for t in range(6)]
    (tmp_path / "four.csv").write_text("user,item,timestamp\n" + "\n".join(lines) + "\n")
    result = cli("train", "--data", tmp_path / "four.csv", "--model", "pop", "--out", tmp_path / "run")
    assert result.code == 0, result.err
    assert "the catalogue holds 4 items: at @5, @10, @20 every item is in the top K" in result.out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any("measure nothing" in note for note in metrics["notes"])


def _as_another_user(arguments: list[str], home) -> subprocess.CompletedProcess:
    """The command run by a user without root's power over permissions: as `nobody` when these tests run as root
    (root reads and writes anything), else as ourselves."""
    import os
    import shutil

    command = [sys.executable, "-m", "fedseqrec.cli", *arguments]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop root's privileges"
        command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HOME": str(home)})


def test_a_folder_that_cannot_be_read_or_written_is_one_line_and_exit_2(tmp_path):
    """Permissions, not an internal error: an unreadable dataset folder, and `data prepare --out` into a read-only
    folder (issue 29's probes; both ended in `internal error`, exit 1)."""
    import os
    import shutil
    import tempfile

    place = tempfile.mkdtemp(dir="/tmp")  # (pytest's own folders are root's alone)
    try:
        os.chmod(place, 0o777)
        unreadable, read_only = os.path.join(place, "unreadable"), os.path.join(place, "read-only")
        os.mkdir(unreadable)
        write(tmp_path / "x", "")
        shutil.copy(tmp_path / "x", os.path.join(unreadable, "log.csv"))
        os.mkdir(read_only)
        os.chmod(unreadable, 0o000)
        os.chmod(read_only, 0o555)
        stats = _as_another_user(["data", "stats", "--data", unreadable], place)
        assert (
            stats.returncode == 2
            and stats.stderr == f"fedseqrec: error: {unreadable}: permission denied (check its permissions)\n"
        )
        prepare = _as_another_user(["data", "prepare", "--data", "shop", "--out", f"{read_only}/prepared"], place)
        assert prepare.returncode == 2, prepare.stderr
        assert prepare.stderr == f"fedseqrec: error: {read_only}: permission denied (check its permissions)\n"
        assert os.listdir(read_only) == []  # nothing half-written
    finally:
        for folder in (os.path.join(place, "unreadable"), place):
            if os.path.exists(folder):
                os.chmod(folder, 0o700)
        shutil.rmtree(place, ignore_errors=True)
