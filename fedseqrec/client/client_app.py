"""The Flower ClientApp: train the global model on this client's users, evaluate it on their held-out events.

The configuration comes with every message (the server sends the whole run config), over the node's run config:
a simulated client started by ``fedseqrec simulate`` has no run config of its own. The partition comes from the
node config (``partition-id`` / ``num-partitions``, set by Flower's simulation engine or ``--node-config``), and a
deployed node may say where its data is (``data-path``) and where its privacy ledger lives (``ledger-path``).

A deployed node starts a fresh process for every message, so this module imports only what every message needs;
DP-SGD (Opacus) is imported by the rounds that use it. What a client does in a training round is its privacy
mechanism's client half (``fedseqrec.federated.mechanisms``): this module has no branch on the mechanism.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedseqrec.client.secure_aggregation import secure_aggregation_mod
from fedseqrec.data.export import exported_client
from fedseqrec.data.partition import ClientData
from fedseqrec.errors import UserError
from fedseqrec.federated.compression import received_weights, reply_arrays
from fedseqrec.federated.config import RunConfig
from fedseqrec.federated.cooccurrence import ACTION as COOCCURRENCE
from fedseqrec.federated.cooccurrence import PHASE_KEY, silo_sums
from fedseqrec.federated.mechanisms import client_mods, mechanism_of
from fedseqrec.federated.messages import (
    ITEM_COUNTS_KEY,
    PARTITION_KEY,
    PARTITIONS_KEY,
    ROUND_KEY,
    SERVER_KEYS,
    WHICH_KEY,
)
from fedseqrec.federated.task import (
    build_global_model,
    evaluate_locally,
    item_counts,
    load_client_data,
    load_exported_client,
)
from fedseqrec.models.device import on_cpu

# Keys the server adds to the run config in a message's ConfigRecord: ours, and those of Flower's strategies
# (FedProx's proximal term, the clipping norm of the client-side DP wrappers).
MESSAGE_KEYS = (*SERVER_KEYS, "proximal-mu", "clipping_norm")


def message_config(msg: Message, context: Context) -> tuple[RunConfig, ConfigRecord]:
    sent = msg.content["config"]
    values = {**context.run_config, **{k: v for k, v in sent.items() if k not in MESSAGE_KEYS}}
    return RunConfig.from_run_config(values), sent


def _exported_folder(context: Context) -> Path | None:
    path = context.node_config.get("data-path")
    return Path(str(path)) if path is not None and exported_client(Path(str(path))) is not None else None


def partition_of(context: Context, sent: ConfigRecord | None = None) -> tuple[int, int]:
    """(partition id, number of partitions): named by the message (a pooled simulated node), else from the node's
    exported folder if it has one, else from the node config."""
    if sent is not None and PARTITION_KEY in sent:
        return int(sent[PARTITION_KEY]), int(sent[PARTITIONS_KEY])
    path = context.node_config.get("data-path")
    client = exported_client(Path(str(path))) if path is not None else None
    if client is not None:
        exported = int(client["id"]), int(client["num_partitions"])
        stated = context.node_config.get("partition-id")
        if stated is not None and int(stated) != exported[0]:
            raise UserError(f"node config says partition-id={stated}, but data-path {path} is client {exported[0]}")
        return exported
    return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])


def _client_data(cfg: RunConfig, context: Context, sent: ConfigRecord) -> ClientData:
    """The node's users. A deployed node names where its data lives (``data-path`` in its node config): its
    folder from `fedseqrec data export-partitions`, or a whole dataset it takes its partition of; without one,
    the run config's ``data`` (simulation: every client reads the same data and keeps its partition)."""
    torch.set_num_threads(cfg.fit.threads or torch.get_num_threads())
    folder = _exported_folder(context)
    if folder is not None:
        if cfg.privacy.public_users > 0 or cfg.cooccurrence.cooc_public_users > 0:
            raise UserError(
                f"data-path {folder}: an exported partition renumbers its users, so the public users (drawn by id "
                "from the whole dataset) cannot be found in it: give this node the dataset, or drop --public-users "
                "(--cooc-public-users)"
            )
        return load_exported_client(folder, cfg)
    if "data-path" in context.node_config:
        cfg = cfg.replace(data=str(context.node_config["data-path"]))
    return load_client_data(cfg, *partition_of(context, sent))


def refusing(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """The handler, with its expected refusals (a UserError: a tampered ledger, a folder of another client) sent
    back as an error reply of one line, which the server names in the round's log — not raised, which the engine
    would print with its whole traceback around the one useful line."""

    @functools.wraps(handler)
    def handle(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except UserError as err:
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"refused: {err}"), reply_to=msg)

    return handle


def _cooccurrence_sums(msg: Message, context: Context) -> Message:
    """This silo's sums for the phase of the co-occurrence release the message names."""
    cfg, sent = message_config(msg, context)
    data = _client_data(cfg, context, sent)
    arrays = msg.content.array_records.get("arrays")
    given = {name: array.numpy() for name, array in arrays.items()} if arrays is not None else {}
    sums = silo_sums(data, str(sent[PHASE_KEY]), cfg.cooccurrence, cfg.data.seed, given)
    arrays = ArrayRecord({name: Array(value) for name, value in sums.items()})
    users = len(data.users)
    metrics = MetricRecord({"partition-id": data.client, "users": users, "num-examples": users})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


def make_client_app(mods: list | None = None) -> ClientApp:
    app = ClientApp(mods=mods or [])

    @app.query()
    @refusing
    def identify(msg: Message, context: Context) -> Message:
        """Which partition this node serves: the server samples clients by it, so runs are reproducible."""
        partition, partitions = partition_of(context)
        metrics = MetricRecord({"partition-id": partition, "num-partitions": partitions})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    # Per handler: Flower's clipping mods don't check the message type. Secure aggregation masks what a
    # mechanism's mod clipped, so it comes first (outermost).
    @app.train(mods=[secure_aggregation_mod, *client_mods()])
    @refusing
    def train(msg: Message, context: Context) -> Message:
        started = time.perf_counter()
        cfg, sent = message_config(msg, context)
        if PHASE_KEY in sent:  # a co-occurrence sum under SecAgg+, whose mod masks only the replies to train messages
            return _cooccurrence_sums(msg, context)
        data = _client_data(cfg, context, sent)
        received = received_weights(
            msg.content["arrays"], sent, cfg.compression.download_compression, context.state, data.client
        )
        global_weights = {k: torch.from_numpy(np.array(v)) for k, v in received.items()}
        model = build_global_model(data.sequences, cfg.model, global_weights, cfg.fit.hardware)
        server_round = int(sent[ROUND_KEY])
        client_round = mechanism_of(cfg.privacy).client_half()
        # --lr-schedule: this round's learning rate
        outcome = client_round(model, data, cfg.for_round(server_round), server_round, context, sent)
        result, privacy = outcome.result, outcome.metrics
        if result is None:  # declined (privacy budget): no update, and why
            metrics = MetricRecord({"num-examples": 0, "partition-id": data.client, "declined": 1, **privacy})
            status = ConfigRecord({"reason": outcome.reason})
            return Message(RecordDict({"metrics": metrics, "status": status}), reply_to=msg)
        metrics = MetricRecord(
            {
                "num-examples": result.examples,
                "partition-id": data.client,
                # a diverged client's NaN goes as it is (the server rejects it); no examples: no loss
                "train-loss": result.loss if result.examples else 0.0,
                "steps": result.steps,
                "train-seconds": result.seconds,
                **privacy,
            }
        )
        if cfg.algorithm.item_weighted:
            metrics[ITEM_COUNTS_KEY] = item_counts(data)
        sent_back = on_cpu(model.state_dict()) if outcome.update is None else outcome.update
        reference = global_weights if outcome.update is None else None  # weights go back as their update
        arrays = reply_arrays(
            {k: v.numpy() for k, v in sent_back.items()},
            None if reference is None else {k: v.numpy() for k, v in reference.items()},
            cfg.compression,
            context.state,
            data.client,
        )
        metrics["seconds"] = time.perf_counter() - started  # all of this client's work for the round
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    @app.query(COOCCURRENCE)
    @refusing
    def cooccurrence(msg: Message, context: Context) -> Message:
        """This silo's sums for the co-occurrence release (``--model cooc``; ``federated.cooccurrence``)."""
        return _cooccurrence_sums(msg, context)

    @app.evaluate()
    @refusing
    def evaluate(msg: Message, context: Context) -> Message:
        """Metric sums and the number of targets, so the server divides once over all clients."""
        cfg, sent = message_config(msg, context)
        data = _client_data(cfg, context, sent)
        global_weights = msg.content["arrays"].to_torch_state_dict()
        model = build_global_model(data.sequences, cfg.model, global_weights, cfg.fit.hardware)
        sums = evaluate_locally(model, data, cfg.evaluation.protocol, str(sent.get(WHICH_KEY, "valid")))
        metrics = {"num-examples": sums.count, "partition-id": data.client}
        metrics.update({f"sum:{name}": value for name, value in sums.sums.items()})
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


app = make_client_app()
