"""The federated training loop the ServerApp runs: choose clients, send the global model, aggregate, evaluate,
checkpoint — one completed round at a time, so a run can resume after its last completed round.

Clients are chosen by partition id with a generator seeded by (seed, round), and replies are aggregated in
partition order: a resumed run takes the same clients and reaches the same weights as an uninterrupted one. The
privacy mechanism (none, DP-SGD at the clients, DP-FedAvg) is one object the loop asks at fixed points.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log

from fedseqrec.data.canaries import seal
from fedseqrec.data.tasks import task_of
from fedseqrec.errors import RunError, UserError
from fedseqrec.federated.config import RunConfig
from fedseqrec.federated.mechanisms import make_mechanism
from fedseqrec.federated.task import build_global_model, cached_dataset, expected_clients, server_data
from fedseqrec.models.checkpoint import describe
from fedseqrec.models.device import on_cpu
from fedseqrec.privacy.config import LAST
from fedseqrec.privacy.mechanism import BudgetExhausted, RunFacts
from fedseqrec.results.folder import STATE, RunFolder
from fedseqrec.server.broadcast import Broadcast
from fedseqrec.server.directory import ChosenNodes, ClientDirectory, NodePool, choose_clients
from fedseqrec.server.evaluation import GlobalEvaluation
from fedseqrec.server.finish import INITIAL, Finaliser, RunEnd
from fedseqrec.server.replies import ReplyRules, decompressed, metrics_problem, update_problem
from fedseqrec.server.secure_aggregation import SecAggSettings, SecureRound, secure_settings, update_rounding
from fedseqrec.server.strategies import (
    build_strategy,
    check_robust_round,
    restore_strategy_state,
    strategy_state,
)


@dataclass
class Progress:
    """Where the federation loop reports: a callback per round (the CLI prints a line, the ServerApp logs)."""

    on_round: Callable[[dict], None] = lambda record: None
    on_message: Callable[[str], None] = lambda text: log(INFO, "%s", text)
    stop_rule: Callable[[dict], str | None] = lambda record: None  # after a round: why to end the run now, or None


@dataclass
class Federation:
    grid: object
    cfg: RunConfig
    folder: RunFolder
    progress: Progress = field(default_factory=Progress)

    def __post_init__(self):
        cfg = self.cfg
        self.ds = server_data(cfg)
        if cfg.evaluation.mode != "federated" and self.ds.split.n_test == 0:
            raise UserError(
                f"data {cfg.data.data}: the server's data holds no held-out events (a server folder from "
                "`fedseqrec data export-partitions`?): set evaluation = federated, or give the server the dataset"
            )
        torch.manual_seed(cfg.data.seed)  # the initial global model
        self.model = build_global_model(self.ds.sequences, cfg.model, hardware=cfg.fit.hardware)
        facts = RunFacts(
            cfg.algorithm.clients_per_round,
            cfg.algorithm.min_clients,
            cfg.data.partition,
            self.progress.on_message,
            users=self.ds.sequences.n_users,
            horizon=cfg.planned_horizon(),
            trainable=tuple(n for n, p in self.model.named_parameters() if p.requires_grad),
            item_tables=tuple(self.model.item_table_keys()),
            seed=cfg.data.seed,
            secure=cfg.secure.secure_aggregation,
            secure_rounding=update_rounding(cfg, self.model),
            selection=task_of(cfg.data.task).selection,
            batch_size=cfg.fit.batch_size,
            local_epochs=cfg.fit.local_epochs,
            local_steps=cfg.fit.local_steps,
        )
        self.mechanism = make_mechanism(cfg.privacy, facts)
        self.strategy = build_strategy(cfg.algorithm, cfg.fit.lr, self.mechanism, self.model.item_table_keys())
        self.directory = self._directory()
        self.evaluate = GlobalEvaluation(
            self.grid,
            cfg,
            self.model,
            self.ds,
            self.strategy,
            self.directory,
            self.client_config,
            self.progress.on_message,
        )
        self.round, self.best = 0, {"round": 0, "score": -1.0}
        self.task = task_of(cfg.data.task)
        self.chosen = self.task.selection  # what picks the best round
        # The model the run releases: the last round's (a choice that reads no user data), or the best on validation.
        self.releases_last = cfg.privacy.released == LAST
        self.stopped: str | None = None
        self._saved_privacy: str | None = None
        self.arrays = ArrayRecord(on_cpu(self.model.state_dict()))
        keys, weights = self.mechanism.reply_arrays(list(self.arrays.keys()))
        self.secure: SecAggSettings | None = None  # set once the clients are known (run)
        self.broadcast = Broadcast(cfg.compression.download_compression)
        self.rules = ReplyRules.for_arrays(
            self.arrays,
            keys,
            weights=weights,
            max_examples=self.ds.sequences.n_users or 2**31 - 1,
            max_update_norm=cfg.algorithm.max_update_norm,
            max_update_ratio=cfg.algorithm.max_update_ratio,
        )
        if (self.folder.path / STATE).exists():
            self._restore(self.folder.load_state())
        else:
            self.folder.keep_rounds_until(0)  # a run stopped before its first state: the log line of a lost round
            seal(self.folder.path, self.ds.audit)  # the privacy audit's coins, before any training
            self._prepare_model()
        self.folder.write_json("model.json", describe(cfg.model.name, self.model, self.ds.sequences))

    def _directory(self) -> ClientDirectory | NodePool:
        pool = self.cfg.algorithm.client_pool
        if pool is None:
            return ClientDirectory(self.grid, self.progress.on_message)
        clients = expected_clients(self.cfg) or cached_dataset(self.cfg.data).partition.n_clients
        return NodePool(self.grid, clients, self.progress.on_message)

    def _prepare_model(self) -> None:
        cfg = self.cfg
        done = self.mechanism.prepare_model(
            self.model, self.ds.sequences, self.ds.split, cfg.fit, cfg.data.seed, cfg.evaluation.protocol
        )
        if done:
            self.arrays = ArrayRecord(on_cpu(self.model.state_dict()))
            self.folder.save_tensors(INITIAL, self.arrays.to_torch_state_dict())
            self.progress.on_message(done)
        # A run stopped before its first round may have made the release already: it is reused, never redrawn.
        earlier = self.folder.path / "privacy.json"
        saved = earlier.read_text() if earlier.exists() else None
        released = self.mechanism.prepare_release(self.ds.sequences, self.ds.split, saved)
        if released:
            self.folder.write_text("privacy.json", self.mechanism.state())
            self.progress.on_message(released)

    def _restore(self, state: dict) -> None:
        self.round, self.best = int(state["round"]), dict(state["best"])
        self.arrays = ArrayRecord(state["arrays"])
        restore_strategy_state(self.strategy, state["strategy"])
        self._saved_privacy = state.get("privacy")
        self.folder.keep_rounds_until(self.round)
        self.progress.on_message(f"resuming {self.folder.path} after round {self.round}")

    def run(self) -> dict:
        start = time.perf_counter()
        algorithm = self.cfg.algorithm
        # Learn which node serves which client before the first round, so round times are rounds only.
        clients = self.directory.available(max(algorithm.min_clients, algorithm.clients_per_round or 1))
        self.progress.on_message(f"{len(clients)} clients connected in {time.perf_counter() - start:.1f} s")
        self.mechanism.start(self.directory.num_partitions or len(clients), self._saved_privacy, self.round)
        if self.cfg.secure.secure_aggregation:
            self.secure = secure_settings(
                self.cfg,
                self.rules.weights,
                self.directory.num_partitions or len(clients),
                self.ds.sequences.n_users,
                self.progress.on_message,
            )
        for server_round in range(self.round + 1, algorithm.rounds + 1):
            try:
                record = self.train_round(server_round)
            except BudgetExhausted as stop:
                self.stopped = str(stop)
                self.progress.on_message(f"run ended: {stop}")
                break
            if server_round % self.cfg.evaluation.eval_every == 0 or server_round == algorithm.rounds:
                evaluation_start = time.perf_counter()
                record["valid"] = self.evaluate(self.arrays, "valid", server_round)
                record["eval_seconds"] = round(time.perf_counter() - evaluation_start, 3)
                score = record["valid"].get(self.chosen, -1.0)
                if self.releases_last or score > self.best["score"]:
                    self.best = {"round": server_round, "score": score}
                    self._save_best()
            record["seconds"] = round(time.perf_counter() - record.pop("_start"), 3)
            self._complete(server_round, record)
            self.stopped = self.progress.stop_rule(record) if server_round < algorithm.rounds else None
            if self.stopped:
                self.progress.on_message(f"run ended: {self.stopped}")
                break
        return self.finish()

    def _save_best(self) -> None:
        info = {"round": self.best["round"], f"valid_{self.chosen}": self.best["score"]}
        self.folder.save_model(self.arrays.to_torch_state_dict(), info)

    def train_round(self, server_round: int) -> dict:
        started = time.perf_counter()
        algorithm = self.cfg.algorithm
        self._sizes: list[int] = []  # bytes of each reply's arrays, as sent
        available = self.directory.available(max(algorithm.min_clients, algorithm.clients_per_round or 1))
        if len(available) < algorithm.min_clients:
            raise RunError(
                f"round {server_round}: {len(available)} clients available, fewer than --min-clients "
                f"{algorithm.min_clients}; {self._resumable()}"
            )

        def sample(clients: list[int]) -> list[int]:
            return choose_clients(clients, algorithm.clients_per_round, self.cfg.data.seed, server_round)

        chosen = self.mechanism.choose(available, server_round, sample)
        route = self.directory.route(chosen)
        config = ConfigRecord(self.client_config())
        messages = self.strategy.configure_train(server_round, self.arrays, config, ChosenNodes(self.grid, route))
        messages = self._with_client_config(self.directory.address(list(messages), route), route)
        messages = self.broadcast.address(messages, route, self.arrays, server_round)
        exchange_start = time.perf_counter()
        secure = self._secure_round()
        if secure is not None:
            messages, replies = secure.exchange(messages, algorithm.round_timeout)
        else:
            replies = list(self.grid.send_and_receive(messages, timeout=algorithm.round_timeout)) if messages else []
        exchange_seconds = time.perf_counter() - exchange_start
        # An error the SuperLink writes for a node that is gone may not carry the node as its source: map replies
        # to clients through the message they answer.
        asked = {m.metadata.message_id: (route[m.metadata.dst_node_id], m.metadata.dst_node_id) for m in messages}
        ok, failed = self._sorted_replies(replies, asked, chosen, server_round)
        self.broadcast.delivered([partition for _, partition in ok])
        privacy = self.mechanism.observe(server_round, [reply for reply, _ in ok])  # every release is accounted
        updates = self._checked_updates(ok, failed, server_round, secure)
        if len(updates) < self.mechanism.min_updates(len(chosen)):
            self.mechanism.too_few_updates(server_round, privacy.get("declined", []), len(updates))
            raise RunError(
                f"round {server_round}: {len(updates)} of {len(chosen)} clients returned an update, fewer than "
                f"--min-clients {algorithm.min_clients} (failed: {', '.join(failed) or 'none'}); "
                + self._what_now(failed)
            )
        trained = self.mechanism.to_aggregate(updates)
        figures = _train_figures([r.content["metrics"] for r in trained])
        if secure is not None and trained:
            trained, figures["secure"] = secure.combined(trained, self.arrays, server_round, self._resumable())
        check_robust_round(algorithm, len(trained), server_round)
        arrays = self.strategy.aggregate_train(server_round, trained)[0] if trained else None
        if not trained:
            arrays = self.mechanism.release_without_updates(self.strategy, self.arrays)
        if arrays is not None:
            self.arrays = _as_model_dtypes(arrays, self.model)
        return {
            "_start": started,
            "round": server_round,
            "clients": len(updates),
            "failed": failed,
            **privacy,
            **figures,
            "exchange_seconds": round(exchange_seconds, 3),
            **({"update_bytes": round(sum(self._sizes) / len(self._sizes))} if self._sizes else {}),
            **self.broadcast.figures(),
        }

    def _secure_round(self) -> SecureRound | None:
        if self.secure is None:
            return None
        expected = ArrayRecord({k: self.arrays[k] for k in self.rules.expected})
        return SecureRound(self.grid, self.secure, expected, self.rules, self.progress.on_message)

    def _with_client_config(self, messages: list[Message], route: dict[int, int]) -> list[Message]:
        """Each message with what the mechanism sends its client alone (a strategy may share one content)."""
        for message in messages:
            extra = self.mechanism.client_config(route[message.metadata.dst_node_id])
            if extra:
                content = message.content
                message.content = RecordDict({**content, "config": ConfigRecord({**content["config"], **extra})})
        return messages

    def _sorted_replies(self, replies, asked, chosen, server_round) -> tuple[list[tuple], list[str]]:
        """(reply, partition) of the replies whose metrics hold, in partition order, and the clients that failed."""
        ok, failed = [], []
        answered = set()
        for reply in replies:
            partition, node = asked.get(reply.metadata.reply_to_message_id, ("?", reply.metadata.src_node_id))
            answered.add(partition)
            problem = reply.error.reason if reply.has_error() else self._reply_problem(reply, partition, server_round)
            if problem is None:
                problem = decompressed(reply, self.rules, self.arrays, self.cfg.compression.compression, self._sizes)
            if problem is None:
                ok.append((reply, partition))
                continue
            failed.append(f"client {partition}" + ("" if reply.has_error() else " (rejected)"))
            verb = "failed" if reply.has_error() else "rejected"
            self.progress.on_message(f"round {server_round}: client {partition} (node {node}) {verb}: {problem}")
            if not reply.has_error() and partition != "?":
                self.mechanism.account_refused(server_round, partition, reply, problem)
        for partition in sorted(set(chosen) - answered):
            failed.append(f"client {partition} (no reply)")
            self.progress.on_message(f"round {server_round}: client {partition} did not reply in time")
        ok.sort(key=lambda pair: pair[1])
        return ok, failed

    def _reply_problem(self, reply: Message, partition: int, server_round: int) -> str | None:
        problem = metrics_problem(reply, partition)
        return problem or self.mechanism.reply_problem(server_round, reply.content["metrics"])

    def _checked_updates(self, ok: list[tuple], failed: list[str], server_round: int, secure) -> list[Message]:
        """The replies whose arrays may be aggregated (a client out of privacy budget sends none; under secure
        aggregation they are masked: only their sum is checked)."""
        updates = []
        for reply, partition in ok:
            problem = None if secure is not None else update_problem(reply, self.rules, self.arrays)
            if problem is not None:
                failed.append(f"client {partition} (rejected)")
                self.progress.on_message(f"round {server_round}: client {partition}'s update rejected: {problem}")
            elif reply.content.array_records:
                updates.append(reply)
        return updates

    def client_config(self) -> dict:
        """The run config every message carries, with the run folder resolved (simulated clients keep their
        privacy ledgers under it)."""
        return {**self.cfg.to_run_config(), "out": str(self.folder.path.resolve()), **self.mechanism.message_config()}

    def _complete(self, server_round: int, record: dict) -> None:
        self.round = server_round
        self.folder.append_round(record)
        state = {
            "round": server_round,
            "arrays": self.arrays.to_torch_state_dict(),
            "strategy": strategy_state(self.strategy),
            "best": self.best,
        }
        privacy = self.mechanism.state()
        if privacy is not None:
            state["privacy"] = privacy
            self.folder.write_text("privacy.json", privacy)
        self.folder.save_tensors(STATE, state)
        self.folder.save_tensors("model_last.pt", state["arrays"])
        self.progress.on_round(record)

    def _what_now(self, failed: list[str]) -> str:
        """After a round with too few updates: resume, unless every failure was a rejection — a resumed run asks the
        same clients the same round, and their updates would be rejected again."""
        if failed and all(f.endswith("(rejected)") for f in failed):
            done = f"rounds 1-{self.round} are saved" if self.round else "no round completed"
            return (
                "resuming would ask the same clients the same round and reject them again (the reasons are above): "
                "start a new run with a lower --min-clients, or with what rejected them changed (--max-update-ratio, "
                f"--max-update-norm, a robust --strategy); {done} in {self.folder.path}"
            )
        return self._resumable()

    def _resumable(self) -> str:
        done = f"rounds 1-{self.round} are saved" if self.round else "no round completed"
        return f"{done}; continue with --resume {self.folder.path}"

    def finish(self) -> dict:
        if self.releases_last and 0 < self.best["round"] < self.round:  # the budget ended it between evaluations
            self.best = {"round": self.round, "score": None}
            self._save_best()
        if self.best["round"] == 0 and self.round > 0:  # stopped early, before the first evaluation
            score = self.evaluate(self.arrays, "valid", self.round)[self.chosen]
            self.best = {"round": self.round, "score": score}
            self._save_best()
        if self.best["round"] == 0:
            raise RunError(f"no round was completed; {self.stopped or self._resumable()}")
        finaliser = Finaliser(
            self.cfg,
            self.folder,
            self.model,
            self.ds,
            self.evaluate,
            self.mechanism,
            self.task,
            self.progress.on_message,
        )
        secure = self.secure.describe() if self.secure is not None else None
        return finaliser.finish(RunEnd(self.round, self.best["round"], self.arrays, self.stopped, secure))


def _train_figures(metrics: list) -> dict:
    """The round's training loss (weighted by examples) and client times."""
    examples = sum(m["num-examples"] for m in metrics)
    loss = sum(m["train-loss"] * m["num-examples"] for m in metrics) / examples if examples else None
    return {
        "examples": int(examples),
        "loss": round(loss, 5) if loss is not None else None,
        "client_seconds": round(sum(m["seconds"] for m in metrics), 3),
        "max_client_seconds": round(max((m["seconds"] for m in metrics), default=0.0), 3),
    }


def _as_model_dtypes(arrays: ArrayRecord, model: torch.nn.Module) -> ArrayRecord:
    """Aggregation multiplies by float weights: give integer buffers back their own dtype."""
    reference = model.state_dict()
    state = arrays.to_torch_state_dict()
    return ArrayRecord({k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()})
