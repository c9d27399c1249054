"""The Flower ServerApp: read the run config, open the run folder, run the federation loop.

``flwr run .`` builds it from the run config (``[tool.flwr.app.config]`` plus ``--run-config``);
``fedseqrec simulate`` builds it with its own configuration, run folder and progress printer.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import INFO

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedseqrec.data.tasks import task_of
from fedseqrec.errors import UserError
from fedseqrec.federated.config import RunConfig
from fedseqrec.models.config import COUNTED_MODELS
from fedseqrec.results.audit import audit_folder, audit_lines
from fedseqrec.results.folder import RunFolder
from fedseqrec.results.summary import format_round, released_round
from fedseqrec.server.cooccurrence import CooccurrenceRelease
from fedseqrec.server.loop import Federation, Progress
from fedseqrec.server.planning import RunPlan, plan_run


def flower_run_plan(run_config: Mapping) -> RunPlan:
    """``flwr run``'s plan: Flower's run config through the same planning as ``simulate`` and ``deploy``."""
    return plan_run(RunConfig.from_run_config(run_config), starts_clients=False)


def make_server_app(
    cfg: RunConfig | None = None, folder: RunFolder | None = None, progress: Progress | None = None
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if cfg is None:  # `flwr run`: planned here, as simulate and deploy plan theirs
            plan = flower_run_plan(context.run_config)
            run_cfg, run_folder = plan.config, RunFolder.create(plan.folder, plan.config)
        else:
            run_cfg, run_folder = cfg, folder
        rounds = run_cfg.algorithm.rounds
        task = task_of(run_cfg.data.task)
        reporter = progress or Progress(on_round=lambda r: log(INFO, "%s", format_round(r, rounds, task)))
        runner = CooccurrenceRelease if run_cfg.model.name in COUNTED_MODELS else Federation  # counted, or trained
        results = runner(grid, run_cfg, run_folder, reporter).run()
        test = results["test"]
        reporter.on_message(
            f"{released_round(results, task.selection)}: test {task.headline_of(test)}; "
            f"run folder {run_folder.path.resolve()}"
        )
        if cfg is None and run_cfg.data.audited:  # `flwr run`: no command of ours is left to audit the run
            audit(run_folder, reporter)

    return app


def audit(folder: RunFolder, reporter: Progress) -> None:
    """The privacy audit of the finished run, in the log; a run whose audit cannot be made (its data is not on the
    server's host) is still a finished run: the log says to run `fedseqrec audit` where the data is."""
    try:
        lines, flag = audit_lines(audit_folder(folder.path))
    except UserError as err:
        reporter.on_message(f"privacy audit not made here ({err}): run `fedseqrec audit RUN_DIR --data DATA`")
        return
    for line in [*lines, *([f"flagged: {flag}"] if flag else [])]:
        reporter.on_message(line)


app = make_server_app()
