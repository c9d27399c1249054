"""The federated training loop the ServerApp runs: choose clients, send the global model, aggregate, evaluate,
checkpoint — one completed round at a time, so a run can resume after its last completed round.

Clients are chosen by partition id with a generator seeded by (seed, round), and replies are aggregated in
partition order: a resumed run takes the same clients and reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as _replace
from logging import INFO

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log

from fedseqrec.client.task import build_global_model, cached_dataset
from fedseqrec.errors import RunError, UserError
from fedseqrec.evaluation.evaluator import evaluate_sums
from fedseqrec.evaluation.metrics import MetricSums
from fedseqrec.models.checkpoint import describe
from fedseqrec.privacy.tracker import PrivacyTracker
from fedseqrec.runconfig import FederationConfig
from fedseqrec.server.rundir import STATE, RunFolder
from fedseqrec.server.strategies import ChosenNodes, build_strategy, restore_strategy_state, strategy_state

SELECTION_METRIC = "NDCG@10"


def choose_clients(available: list[int], per_round: int | None, seed: int, server_round: int) -> list[int]:
    """The round's clients: all of them, or ``per_round`` drawn without replacement, by (seed, round)."""
    available = sorted(available)
    if per_round is None or per_round >= len(available):
        return available
    rng = np.random.default_rng([seed, server_round])
    return sorted(rng.choice(available, size=per_round, replace=False).tolist())


def combine_evaluations(replies: list[Message]) -> MetricSums:
    """Federated evaluation: metric sums and target counts added over clients, divided once."""
    total = MetricSums()
    for reply in replies:
        metrics = reply.content["metrics"]
        sums = {k.split(":", 1)[1]: float(v) for k, v in metrics.items() if k.startswith("sum:")}
        total = total.merge(MetricSums(sums, int(metrics["num-examples"])))
    return total


class BudgetExhausted(Exception):
    """Too few clients have privacy budget left for another round: the run ends cleanly."""


class ClientDirectory:
    """Which node serves which partition, learned by asking each new node once."""

    def __init__(self, grid, warn: Callable[[str], None]):
        self.grid, self.warn = grid, warn
        self.node_of: dict[int, int] = {}
        self.num_partitions: int | None = None

    def refresh(self) -> dict[int, int]:
        known = set(self.node_of.values())
        live = set(self.grid.get_node_ids())
        new = sorted(live - known)
        if new:
            questions = [
                Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY)
                for n in new
            ]
            for reply in self.grid.send_and_receive(questions, timeout=60):
                if reply.has_error():
                    self.warn(f"node {reply.metadata.src_node_id} did not say which client it is: {reply.error.reason}")
                    continue
                metrics = reply.content["metrics"]
                self.node_of[int(metrics["partition-id"])] = reply.metadata.src_node_id
                self.num_partitions = int(metrics["num-partitions"])
        self.node_of = {p: n for p, n in self.node_of.items() if n in live}
        return dict(self.node_of)

    def wait_for(self, count: int, seconds: float = 120.0) -> dict[int, int]:
        deadline = time.monotonic() + seconds
        nodes = self.refresh()
        while len(nodes) < count and time.monotonic() < deadline:
            time.sleep(1.0)
            nodes = self.refresh()
        return nodes


@dataclass
class Progress:
    """Where the federation loop reports: a callback per round (the CLI prints a line, the ServerApp logs)."""

    on_round: Callable[[dict], None] = lambda record: None
    on_message: Callable[[str], None] = lambda text: log(INFO, "%s", text)


@dataclass
class Federation:
    grid: object
    cfg: FederationConfig
    folder: RunFolder
    progress: Progress = field(default_factory=Progress)

    def __post_init__(self):
        # The server needs the item vocabulary and, for centralized evaluation, every user's held-out events;
        # not the partition, which each client computes for itself.
        self.ds = cached_dataset(_replace(self.cfg.data_config(), partition=None, clients=None))
        if self.cfg.evaluation != "federated" and self.ds.split.n_test == 0:
            raise UserError(
                f"data {self.cfg.data}: the server's data holds no held-out events (a server folder from "
                "`fedseqrec data export-partitions`?): set evaluation = federated, or give the server the dataset"
            )
        torch.manual_seed(self.cfg.seed)  # the initial global model
        self.model = build_global_model(self.ds.sequences, self.cfg)
        self.strategy = build_strategy(self.cfg)
        self.directory = ClientDirectory(self.grid, self.progress.on_message)
        self.round, self.best = 0, {"round": 0, "score": -1.0}
        self.stopped: str | None = None
        self.privacy = None  # set up once the clients are known (central DP accounts for their number)
        self._saved_privacy: str | None = None
        self.arrays = ArrayRecord(self.model.state_dict())
        if (self.folder.path / STATE).exists():
            self._restore(self.folder.load_state())
        self.folder.write_json("model.json", describe(self.cfg.model, self.model.cfg, self.ds.sequences))

    def _restore(self, state: dict) -> None:
        self.round, self.best = int(state["round"]), dict(state["best"])
        self.arrays = ArrayRecord(state["arrays"])
        restore_strategy_state(self.strategy, state["strategy"])
        self._saved_privacy = state.get("privacy")
        self.folder.keep_rounds_until(self.round)
        self.progress.on_message(f"resuming {self.folder.path} after round {self.round}")

    def run(self) -> dict:
        start = time.perf_counter()
        # Learn which node serves which client before the first round, so round times are rounds only.
        nodes = self.directory.wait_for(max(self.cfg.min_clients, self.cfg.clients_per_round or 1))
        self.progress.on_message(f"{len(nodes)} clients connected in {time.perf_counter() - start:.1f} s")
        self._setup_privacy(self.directory.num_partitions or len(nodes), list(nodes))
        for server_round in range(self.round + 1, self.cfg.rounds + 1):
            try:
                record = self.train_round(server_round)
            except BudgetExhausted as stop:
                self.stopped = str(stop)
                self.progress.on_message(f"run ended: {stop}")
                break
            if server_round % self.cfg.eval_every == 0 or server_round == self.cfg.rounds:
                evaluation_start = time.perf_counter()
                record["valid"] = self.evaluate(self.arrays, "valid", server_round)
                record["eval_seconds"] = round(time.perf_counter() - evaluation_start, 3)
                if record["valid"].get(SELECTION_METRIC, -1.0) > self.best["score"]:
                    self.best = {"round": server_round, "score": record["valid"][SELECTION_METRIC]}
                    self.folder.save_tensors("model.pt", self.arrays.to_torch_state_dict())
            record["seconds"] = round(time.perf_counter() - record.pop("_start"), 3)
            self._complete(server_round, record)
        return self.finish()

    def _setup_privacy(self, n_clients: int, clients: list[int]) -> None:
        cfg = self.cfg
        if cfg.dp:
            self.privacy = PrivacyTracker(cfg.accountant, self.progress.on_message)
        elif cfg.central_dp is not None:
            from fedseqrec.privacy.central import CentralAccountant, CentralTracker

            delta = cfg.delta if cfg.delta is not None else min(1e-5, 0.1 / n_clients)
            accountant = CentralAccountant(cfg.central_noise, cfg.clients_per_round / n_clients, delta, cfg.accountant)
            self.privacy = CentralTracker(accountant, cfg.budget, cfg.partition, list(range(n_clients)))
        if self.privacy is not None and self._saved_privacy:
            self.privacy.restore(self._saved_privacy, self.round)

    def _choose(self, nodes: dict[int, int], server_round: int) -> list[int]:
        cfg = self.cfg
        if cfg.central_dp is None:
            return choose_clients(list(nodes), cfg.clients_per_round, cfg.seed, server_round)
        from fedseqrec.privacy.central import poisson_clients

        if not self.privacy.allows_another_round():
            raise BudgetExhausted(
                f"privacy budget exhausted: another round would take ε above the budget {cfg.budget:g} "
                f"(now {self.privacy.max_epsilon():.3f})"
            )
        return poisson_clients(list(nodes), self.privacy.accountant.rate)

    def train_round(self, server_round: int) -> dict:
        started = time.perf_counter()
        cfg = self.cfg
        nodes = self.directory.wait_for(max(cfg.min_clients, cfg.clients_per_round or 1))
        if len(nodes) < cfg.min_clients:
            raise RunError(
                f"round {server_round}: {len(nodes)} clients available, fewer than --min-clients {cfg.min_clients}; "
                f"{self._resumable()}"
            )
        chosen = self._choose(nodes, server_round)
        config = ConfigRecord(self.client_config())
        messages = self.strategy.configure_train(
            server_round, self.arrays, config, ChosenNodes(self.grid, [nodes[p] for p in chosen])
        )
        partition_of = {n: p for p, n in nodes.items()}
        exchange_start = time.perf_counter()
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=cfg.round_timeout)) if messages else []
        exchange_seconds = time.perf_counter() - exchange_start
        # An error the SuperLink writes for a node that is gone may not carry the node as its source: map replies
        # to clients through the message they answer.
        asked = {
            m.metadata.message_id: (partition_of[m.metadata.dst_node_id], m.metadata.dst_node_id) for m in messages
        }
        ok, failed = self._sorted_replies(replies, asked, chosen, server_round)
        privacy = self.privacy.observe(server_round, ok) if self.privacy is not None else {}
        updates = [r for r in ok if r.content.array_records]  # a client out of privacy budget sends none
        if len(updates) < (min(cfg.min_clients, len(chosen)) if cfg.central_dp else cfg.min_clients):
            if privacy.get("declined"):
                raise BudgetExhausted(
                    f"privacy budget exhausted: in round {server_round} clients {', '.join(privacy['declined'])} "
                    f"declined to train, {len(updates)} updates left, fewer than --min-clients {cfg.min_clients}"
                )
            raise RunError(
                f"round {server_round}: {len(updates)} of {len(chosen)} clients returned an update, fewer than "
                f"--min-clients {cfg.min_clients} (failed: {', '.join(failed) or 'none'}); {self._resumable()}"
            )
        trained = [r for r in updates if r.content["metrics"]["num-examples"] > 0]
        if trained:
            arrays, _ = self.strategy.aggregate_train(server_round, trained)
            if arrays is not None:
                self.arrays = _as_model_dtypes(arrays, self.model)
        elif cfg.central_dp is not None:  # nobody sampled (or nobody with data): the noise is still released
            from fedseqrec.privacy.central import noise_only_release

            self.arrays = _as_model_dtypes(noise_only_release(self.strategy, self.arrays), self.model)
        metrics = [r.content["metrics"] for r in trained]
        examples = sum(m["num-examples"] for m in metrics)
        return {
            "_start": started,
            "round": server_round,
            "clients": len(updates),
            "failed": failed,
            **privacy,
            "examples": int(examples),
            "loss": round(sum(m["train-loss"] * m["num-examples"] for m in metrics) / examples, 5)
            if examples
            else None,
            "exchange_seconds": round(exchange_seconds, 3),  # sending the model out until the last reply
            "client_seconds": round(sum(m["seconds"] for m in metrics), 3),
            "max_client_seconds": round(max((m["seconds"] for m in metrics), default=0.0), 3),
        }

    def _sorted_replies(self, replies, asked, chosen, server_round) -> tuple[list[Message], list[str]]:
        ok, failed = [], []
        answered = set()
        for reply in replies:
            partition, node = asked.get(reply.metadata.reply_to_message_id, ("?", reply.metadata.src_node_id))
            answered.add(partition)
            if reply.has_error():
                failed.append(f"client {partition}")
                self.progress.on_message(
                    f"round {server_round}: client {partition} (node {node}) failed: {reply.error.reason}"
                )
            else:
                ok.append(reply)
        for partition in sorted(set(chosen) - answered):
            failed.append(f"client {partition} (no reply)")
            self.progress.on_message(f"round {server_round}: client {partition} did not reply in time")
        ok.sort(key=lambda r: int(r.content["metrics"]["partition-id"]))
        return ok, failed

    def evaluate(self, arrays: ArrayRecord, which: str, server_round: int) -> dict[str, float]:
        """Centralized (on the server's copy of every user's held-out events) or federated (clients' own)."""
        if self.cfg.evaluation in ("centralized", "both"):
            self.model.load_state_dict(arrays.to_torch_state_dict())
            result = evaluate_sums(
                self.model,
                self.ds.sequences,
                self.ds.split,
                which,
                max_len=self.model.cfg.max_len,
                protocol=self.cfg.protocol,
            ).result()
            if self.cfg.evaluation == "both":
                federated = self.evaluate_federated(arrays, which, server_round)
                result.update({f"federated:{k}": v for k, v in federated.items()})
            return result
        return self.evaluate_federated(arrays, which, server_round)

    def evaluate_federated(self, arrays: ArrayRecord, which: str, server_round: int) -> dict[str, float]:
        nodes = self.directory.refresh()
        share = max(1, round(self.cfg.fraction_evaluate * len(nodes)))
        chosen = choose_clients(list(nodes), share, self.cfg.seed + 1, server_round)
        config = ConfigRecord({**self.client_config(), "which": which})
        messages = self.strategy.configure_evaluate(
            server_round, arrays, config, ChosenNodes(self.grid, [nodes[p] for p in chosen])
        )
        replies = [r for r in self.grid.send_and_receive(list(messages), timeout=self.cfg.round_timeout)]
        for reply in replies:
            if reply.has_error():
                self.progress.on_message(
                    f"evaluation after round {server_round}: node {reply.metadata.src_node_id} failed: "
                    f"{reply.error.reason}"
                )
        return combine_evaluations([r for r in replies if not r.has_error()]).result()

    def client_config(self) -> dict:
        """The run config every message carries, with the run folder resolved (simulated clients keep their
        privacy ledgers under it)."""
        return {**self.cfg.to_run_config(), "out": str(self.folder.path.resolve())}

    def _complete(self, server_round: int, record: dict) -> None:
        self.round = server_round
        self.folder.append_round(record)
        state = {
            "round": server_round,
            "arrays": self.arrays.to_torch_state_dict(),
            "strategy": strategy_state(self.strategy),
            "best": self.best,
        }
        if self.privacy is not None:
            state["privacy"] = self.privacy.to_json()
            self.folder.write_text("privacy.json", self.privacy.to_json())
        self.folder.save_tensors(STATE, state)
        self.folder.save_tensors("model_last.pt", state["arrays"])
        self.progress.on_round(record)

    def _resumable(self) -> str:
        done = f"rounds 1-{self.round} are saved" if self.round else "no round completed"
        return f"{done}; continue with --resume {self.folder.path}"

    def finish(self) -> dict:
        if self.best["round"] == 0 and self.round > 0:  # stopped early, before the first evaluation
            self.best = {
                "round": self.round,
                "score": self.evaluate(self.arrays, "valid", self.round)[SELECTION_METRIC],
            }
            self.folder.save_tensors("model.pt", self.arrays.to_torch_state_dict())
        if self.best["round"] == 0:
            raise RunError(f"no round was completed; {self.stopped or self._resumable()}")
        best = ArrayRecord(torch.load(self.folder.path / "model.pt", weights_only=True))
        last_round = self.folder.rounds()[-1]
        results = {
            "model": self.cfg.model,
            "strategy": self.cfg.strategy,
            "partition": self.cfg.partition,
            "evaluation": self.cfg.evaluation,
            "protocol": self.cfg.protocol,
            "rounds_run": self.round,
            "stopped": self.stopped,
            "best_round": self.best["round"],
            "valid": self.evaluate(best, "valid", self.round),
            "test": self.evaluate(best, "test", self.round),
            "last": {
                "round": self.round,
                "valid": last_round.get("valid") or self.evaluate(self.arrays, "valid", self.round),
                "test": self.evaluate(self.arrays, "test", self.round),
            },
            "params": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "seconds": round(sum(r["seconds"] for r in self.folder.rounds()), 2),
        }
        if self.privacy is not None:
            results["privacy"] = {"max_epsilon": self.privacy.max_epsilon(), "accountant": self.cfg.accountant}
        self.folder.write_json("metrics.json", results)
        if self.privacy is not None:
            from fedseqrec.privacy.report import write_privacy_report

            write_privacy_report(self.folder.path)
        self.folder.write_text("summary.md", summary_markdown(results, self.folder.rounds()))
        return results


def _as_model_dtypes(arrays: ArrayRecord, model: torch.nn.Module) -> ArrayRecord:
    """Aggregation multiplies by float weights: give integer buffers back their own dtype."""
    reference = model.state_dict()
    state = arrays.to_torch_state_dict()
    return ArrayRecord({k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()})


def format_round(record: dict, rounds: int) -> str:
    """One progress line: round, clients, loss, validation NDCG@10 and HR@10, seconds."""
    valid = record.get("valid") or {}
    parts = [f"round {record['round']:>3}/{rounds}", f"clients {record['clients']:>3}"]
    parts.append("loss      -" if record.get("loss") is None else f"loss {record['loss']:6.3f}")
    if "NDCG@10" in valid:
        parts += [f"NDCG@10 {valid['NDCG@10']:.4f}", f"HR@10 {valid['HR@10']:.4f}"]
    if "epsilon_max" in record:
        parts.append(f"ε {record['epsilon_max']:.3f}")
    parts.append(f"{record['seconds']:6.1f} s")
    if record.get("failed"):
        parts.append(f"failed: {', '.join(record['failed'])}")
    return "  ".join(parts)


def summary_table(rounds: list[dict]) -> str:
    private = any("epsilon_max" in r for r in rounds)
    header = "| round | clients | loss | valid NDCG@10 | valid HR@10 |" + (" largest ε |" if private else "")
    lines = [header + " seconds |", "|---:" * (7 if private else 6) + "|"]
    for r in rounds:
        valid = r.get("valid") or {}
        ndcg = f"{valid['NDCG@10']:.4f}" if "NDCG@10" in valid else ""
        hr = f"{valid['HR@10']:.4f}" if "HR@10" in valid else ""
        loss = "" if r.get("loss") is None else f"{r['loss']:.4f}"
        eps = f" {r['epsilon_max']:.3f} |" if private else ""
        lines.append(f"| {r['round']} | {r['clients']} | {loss} | {ndcg} | {hr} |{eps} {r['seconds']:.1f} |")
    return "\n".join(lines)


def summary_markdown(results: dict, rounds: list[dict]) -> str:
    test, valid = results["test"], results["valid"]
    return (
        f"# Federated run: {results['model']} with {results['strategy']} ({results['partition']} partition)\n\n"
        f"- rounds: {results['rounds_run']}; best round (validation NDCG@10): {results['best_round']}\n"
        f"- test at the best round: NDCG@10 {test.get('NDCG@10', float('nan')):.4f}, "
        f"HR@10 {test.get('HR@10', float('nan')):.4f}, MRR@10 {test.get('MRR@10', float('nan')):.4f}\n"
        f"- validation at the best round: NDCG@10 {valid.get('NDCG@10', float('nan')):.4f}\n"
        f"- test after the last round: NDCG@10 {results['last']['test'].get('NDCG@10', float('nan')):.4f}\n"
        f"- evaluation: {results['evaluation']} ({results['protocol']} ranking); {results['seconds']:.1f} s\n"
        + (f"- stopped: {results['stopped']}\n" if results.get("stopped") else "")
        + (
            f"- largest client ε: {results['privacy']['max_epsilon']:.3f} (see privacy_report.md)\n"
            if results.get("privacy")
            else ""
        )
        + "\n"
        f"{summary_table(rounds)}\n"
    )
