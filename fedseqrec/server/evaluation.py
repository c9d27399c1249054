"""Evaluating the global model: centralized (on the server's copy of every user's held-out events) or federated
(each client on its own users, metric sums added over clients and divided once)."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, Message

from fedseqrec.data.dataset import Dataset
from fedseqrec.evaluation.evaluator import evaluate_sums
from fedseqrec.evaluation.metrics import MetricSums
from fedseqrec.federated.config import RunConfig
from fedseqrec.federated.messages import WHICH_KEY
from fedseqrec.models.base import SequentialRecommender
from fedseqrec.server.directory import ChosenNodes, choose_clients


def combine_evaluations(replies: list[Message]) -> MetricSums:
    """Federated evaluation: metric sums and target counts added over clients, divided once."""
    total = MetricSums()
    for reply in replies:
        metrics = reply.content["metrics"]
        sums = {k.split(":", 1)[1]: float(v) for k, v in metrics.items() if k.startswith("sum:")}
        total = total.merge(MetricSums(sums, int(metrics["num-examples"])))
    return total


class GlobalEvaluation:
    """The run's evaluation of a set of global weights, given what it needs: the grid and the directory of clients
    (federated), the global model's module and the server's data (centralized), the strategy that builds the
    messages, and the config every message carries."""

    def __init__(
        self,
        grid,
        cfg: RunConfig,
        model: SequentialRecommender,
        ds: Dataset,
        strategy,
        directory,
        message_config: Callable[[], dict],
        warn: Callable[[str], None],
    ):
        self.grid, self.cfg, self.model, self.ds, self.strategy = grid, cfg, model, ds, strategy
        self.directory, self.message_config, self.warn = directory, message_config, warn

    def __call__(self, arrays: ArrayRecord, which: str, server_round: int) -> dict[str, float]:
        mode = self.cfg.evaluation.mode
        if mode == "federated":
            return self.federated(arrays, which, server_round)
        result = self.centralized(arrays, which)
        if mode == "both":
            federated = self.federated(arrays, which, server_round)
            result.update({f"federated:{k}": v for k, v in federated.items()})
        return result

    def centralized(self, arrays: ArrayRecord, which: str) -> dict[str, float]:
        model, ds = self.model, self.ds
        model.load_state_dict(arrays.to_torch_state_dict())
        protocol = self.cfg.evaluation.protocol
        return evaluate_sums(
            model, ds.sequences, ds.split, which, max_len=model.cfg.max_len, protocol=protocol
        ).result()

    def federated(self, arrays: ArrayRecord, which: str, server_round: int) -> dict[str, float]:
        cfg = self.cfg
        clients = self.directory.available(1)
        share = max(1, round(cfg.evaluation.fraction_evaluate * len(clients)))
        chosen = choose_clients(clients, share, cfg.data.seed + 1, server_round)
        route = self.directory.route(chosen)
        config = ConfigRecord({**self.message_config(), WHICH_KEY: which})
        messages = self.strategy.configure_evaluate(server_round, arrays, config, ChosenNodes(self.grid, route))
        messages = self.directory.address(list(messages), route)
        replies = list(self.grid.send_and_receive(messages, timeout=cfg.algorithm.round_timeout))
        for reply in replies:
            if reply.has_error():
                self.warn(
                    f"evaluation after round {server_round}: node {reply.metadata.src_node_id} failed: "
                    f"{reply.error.reason}"
                )
        return combine_evaluations([r for r in replies if not r.has_error()]).result()
