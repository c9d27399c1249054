"""The Flower ServerApp: read the run config, open the run folder, run the federation loop.

``flwr run .`` builds it from the run config (``[tool.flwr.app.config]`` plus ``--run-config``);
``fedseqrec simulate`` builds it with its own configuration, run folder and progress printer.
"""

from __future__ import annotations

from logging import INFO
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedseqrec.evaluation.config import headline
from fedseqrec.federated.config import RunConfig
from fedseqrec.results.folder import RunFolder
from fedseqrec.results.summary import format_round
from fedseqrec.server.loop import Federation, Progress
from fedseqrec.server.planning import default_run_folder


def make_server_app(
    cfg: RunConfig | None = None, folder: RunFolder | None = None, progress: Progress | None = None
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = cfg or RunConfig.from_run_config(context.run_config).with_horizon()
        run_cfg.validate()
        run_folder = folder or RunFolder.create(
            Path(run_cfg.out) if run_cfg.out else default_run_folder(run_cfg), run_cfg
        )
        rounds = run_cfg.algorithm.rounds
        reporter = progress or Progress(on_round=lambda r: log(INFO, "%s", format_round(r, rounds)))
        results = Federation(grid, run_cfg, run_folder, reporter).run()
        test = results["test"]
        reporter.on_message(
            f"best round {results['best_round']}: test {headline(test)}; "
            f"run folder {run_folder.path.resolve()}"
        )

    return app


app = make_server_app()
