import os
from pathlib import Path

import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedseqrec.cli import main

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Real datasets live outside the repository: $FEDSEQREC_DATA_DIR, else ../shared/data beside the project."""
    return Path(os.environ.get("FEDSEQREC_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def ml100k() -> Path:
    path = shared_data_dir() / "ml-100k"
    if not (path / "ml-100k.inter").is_file():
        pytest.fail(f"ml-100k not found at {path}; set FEDSEQREC_DATA_DIR to the folder holding ml-100k/")
    return path


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def cli(capsys):
    """Run the fedseqrec command in-process; argparse's SystemExit becomes an exit code too."""

    def run(*args: str) -> CliResult:
        try:
            code = main([str(a) for a in args])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


@pytest.fixture(scope="session")
def shared_anchors() -> Path:
    path = shared_data_dir().parent / "anchors"
    if not path.is_dir():
        pytest.fail(f"reference figures not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _task_identity():
    """Building a Flower Message outside a Flower runtime needs a task identity."""
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a federation or real processes (seconds to minutes)")
