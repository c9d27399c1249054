import os
from pathlib import Path

import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedseqrec.cli import main

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Real datasets live outside the repository: $FEDSEQREC_DATA_DIR, else ../shared/data beside the project."""
    return Path(os.environ.get("FEDSEQREC_DATA_DIR", REPO.parent / "shared" / "data"))


def real_dataset(relative: str, what: str) -> Path:
    """A real dataset's file or folder under the data directory. Without it the test is skipped, saying how to
    get it — unless FEDSEQREC_REQUIRE_DATA=1 (CI sets it): then a missing dataset fails the test."""
    path = shared_data_dir() / relative
    if not path.exists():
        message = (
            f"{what} not found at {path}: get it with `fedseqrec data download {relative.split('/')[0]} --out DIR` "
            "and set FEDSEQREC_DATA_DIR=DIR"
        )
        if os.environ.get("FEDSEQREC_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def ml100k() -> Path:
    return real_dataset("ml-100k/ml-100k.inter", "MovieLens-100K").parent


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
        if os.environ.get("FEDSEQREC_REQUIRE_DATA") == "1":
            pytest.fail(f"reference figures not found at {path}")
        pytest.skip(f"reference figures not found at {path} (they sit beside the data directory)")
    return path


@pytest.fixture(autouse=True)
def _task_identity():
    """Building a Flower Message outside a Flower runtime needs a task identity."""
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a federation or real processes (seconds to minutes)")


@pytest.fixture(scope="session", autouse=True)
def _one_ray_cluster_for_the_session():
    """Every simulated federation of the test session on one Ray cluster. Flower starts Ray when none is running
    and stops it when each simulation ends; that start costs seconds on two cores, some forty times a suite. Here
    the first simulation starts it and it stays (each simulation still ends its own client actors); it stops when
    the session ends. Tests only: a user's `fedseqrec simulate` leaves nothing running."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    def end_actors_only(self) -> None:
        if self.pool:
            self.pool.terminate_all_actors()

    patch = pytest.MonkeyPatch()
    patch.setattr(RayBackend, "terminate", end_actors_only)
    yield
    patch.undo()
    import ray

    if ray.is_initialized():
        ray.shutdown()
