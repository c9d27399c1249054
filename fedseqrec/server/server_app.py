"""The Flower ServerApp: read the run config, open the run folder, run the federation loop.

``flwr run .`` builds it from the run config (``[tool.flwr.app.config]`` plus ``--run-config``);
``fedseqrec simulate`` builds it with its own configuration, run folder and progress printer.
"""

from __future__ import annotations

import time
from logging import INFO
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedseqrec.runconfig import FederationConfig
from fedseqrec.server.federation import Federation, Progress, format_round
from fedseqrec.server.rundir import RunFolder


def default_run_folder(cfg: FederationConfig) -> Path:
    return Path("runs") / f"{cfg.strategy}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_server_app(
    cfg: FederationConfig | None = None, folder: RunFolder | None = None, progress: Progress | None = None
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = cfg or FederationConfig.from_run_config(context.run_config)
        run_cfg.validate()
        run_folder = folder or RunFolder.create(
            Path(run_cfg.out) if run_cfg.out else default_run_folder(run_cfg), run_cfg
        )
        reporter = progress or Progress(on_round=lambda r: log(INFO, "%s", format_round(r, run_cfg.rounds)))
        results = Federation(grid, run_cfg, run_folder, reporter).run()
        test = results["test"]
        reporter.on_message(
            f"best round {results['best_round']}: test NDCG@10 {test['NDCG@10']:.4f} HR@10 {test['HR@10']:.4f}; "
            f"run folder {run_folder.path.resolve()}"
        )

    return app


app = make_server_app()
