"""The Flower ClientApp: train the global model on this client's users, evaluate it on their held-out events.

The configuration comes with every message (the server sends the whole run config), over the node's run config:
a simulated client started by ``fedseqrec simulate`` has no run config of its own. The partition comes from the
node config (``partition-id`` / ``num-partitions``, set by Flower's simulation engine or ``--node-config``), and a
deployed node may say where its data is (``data-path``) and where its privacy ledger lives (``ledger-path``).

A deployed node starts a fresh process for every message, so this module imports only what every message needs;
DP-SGD (Opacus) is imported by the rounds that use it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedseqrec.client.secure_aggregation import secure_aggregation_mod
from fedseqrec.data.export import exported_client
from fedseqrec.data.partition import ClientData
from fedseqrec.errors import UserError
from fedseqrec.federated.config import RunConfig
from fedseqrec.federated.messages import (
    CLIP_KEY,
    COUNT_NOISE_KEY,
    HELD_LEDGER_KEY,
    ITEM_COUNTS_KEY,
    NOISE_STD_KEY,
    PARTITION_KEY,
    PARTITIONS_KEY,
    ROUND_KEY,
    SERVER_KEYS,
    USER_RATE_KEY,
    WHICH_KEY,
)
from fedseqrec.federated.task import (
    build_global_model,
    client_seed,
    evaluate_locally,
    item_counts,
    load_client_data,
    load_exported_client,
    train_locally,
    training_windows,
)
from fedseqrec.models.base import SequentialRecommender
from fedseqrec.models.training import TrainResult
from fedseqrec.privacy.clipping_mod import central_clipping_mod
from fedseqrec.privacy.config import LOCAL_DPSGD, USER_LEVEL
from fedseqrec.privacy.ledger import ledger_metrics

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
        if cfg.privacy.public_users > 0:
            raise UserError(
                f"data-path {folder}: an exported partition renumbers its users, so the public users (drawn by id "
                "from the whole dataset) cannot be found in it: give this node the dataset, or drop --public-users"
            )
        return load_exported_client(folder, cfg)
    if "data-path" in context.node_config:
        cfg = cfg.replace(data=str(context.node_config["data-path"]))
    return load_client_data(cfg, *partition_of(context, sent))


def ledger_file(cfg: RunConfig, node_config, client: int) -> Path:
    """The node's own file (``ledger-path`` in the node config), else one per client in the run folder."""
    if "ledger-path" in node_config:
        return Path(str(node_config["ledger-path"]))
    if not cfg.out:
        raise UserError("DP-SGD needs a place for the privacy ledger: set out (the run folder) or ledger-path")
    return Path(cfg.out) / "ledgers" / f"client-{client}.json"


def _private_round(model: SequentialRecommender, data: ClientData, cfg: RunConfig, server_round: int, context, sent):
    """(result or None when declined, the ledger's metrics, the reason it declined)."""
    # Imported here, not above: Opacus costs every fresh ClientApp process ≈ 1 s, and only DP rounds need it.
    from fedseqrec.privacy.client import LocalSchedule, private_round

    schedule = LocalSchedule(cfg.fit.local_epochs, cfg.fit.local_steps, cfg.planned_horizon())
    held = json.loads(str(sent.get(HELD_LEDGER_KEY, "[]")))
    new_ledger = str(context.node_config.get("new-ledger", "false")).lower() in ("1", "true", "yes")
    outcome = private_round(
        model, data, cfg.privacy, cfg.fit, schedule, client_seed(cfg, server_round, data.client), server_round,
        context.state, ledger_file(cfg, context.node_config, data.client), held, new_ledger,
    )  # fmt: skip
    return outcome.result, ledger_metrics(outcome.ledger), outcome.reason


def _user_level_round(model, data: ClientData, cfg: RunConfig, server_round: int, sent: ConfigRecord):
    """Federation-wide user-level DP: this silo's sampled users' clipped gradient sum (and its noise share)."""
    # Imported here, not above: Opacus costs a fresh ClientApp process a second; only DP rounds need it.
    from fedseqrec.privacy.user_level import contribution_rule, private_part, silo_contribution

    started = time.perf_counter()
    own = private_part(data, cfg.privacy, cfg.data.seed)  # public users trained the initial model, not these rounds
    windows = training_windows(model, own, cfg.fit, client_seed(cfg, server_round, data.client))
    rule = contribution_rule(cfg.privacy, float(sent[CLIP_KEY]))
    reply = silo_contribution(
        model, windows, float(sent[USER_RATE_KEY]), rule, float(sent[NOISE_STD_KEY]), float(sent[COUNT_NOISE_KEY])
    )
    metrics = {"sampled-users": reply.sampled, "unclipped-centred": reply.unclipped}
    return TrainResult(reply.sampled, reply.loss, 1, time.perf_counter() - started), metrics, reply.total


def _train_round(model, data: ClientData, cfg: RunConfig, server_round: int, context, sent) -> tuple:
    """(the result or None when declined, privacy metrics, why it declined, what to send: the trained weights, or
    under user-level DP the silo's clipped gradient sum)."""
    cfg = cfg.for_round(server_round)  # --lr-schedule: this round's learning rate
    if cfg.privacy.mechanism == LOCAL_DPSGD:
        return (*_private_round(model, data, cfg, server_round, context, sent), None)
    if cfg.privacy.mechanism == USER_LEVEL:
        result, metrics, total = _user_level_round(model, data, cfg, server_round, sent)
        return result, metrics, "", total
    mu = cfg.algorithm.proximal_mu if cfg.algorithm.strategy == "fedprox" else None
    kept = _kept_optimizer(context, data.client) if cfg.fit.keep_optimizer else None
    result = train_locally(model, data, cfg.fit, client_seed(cfg, server_round, data.client), mu, kept)
    if kept:
        context.state[_optimizer_key(data.client)] = ArrayRecord(kept)
    return result, {}, "", None


def _optimizer_key(client: int) -> str:
    # By partition, not by node: a pooled simulated node serves several clients.
    return f"optimizer-state:{client}"


def _kept_optimizer(context: Context, client: int) -> dict[str, torch.Tensor]:
    """The client's AdamW state from its last round (``--keep-optimizer``), empty before its first."""
    key = _optimizer_key(client)
    return dict(context.state[key].to_torch_state_dict()) if key in context.state else {}


def make_client_app(mods: list | None = None) -> ClientApp:
    app = ClientApp(mods=mods or [])

    @app.query()
    def identify(msg: Message, context: Context) -> Message:
        """Which partition this node serves: the server samples clients by it, so runs are reproducible."""
        partition, partitions = partition_of(context)
        metrics = MetricRecord({"partition-id": partition, "num-partitions": partitions})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    # Per handler: Flower's clipping mods don't check the message type. Secure aggregation masks what the clipping
    # mod clipped, so it comes first (outermost).
    @app.train(mods=[secure_aggregation_mod, central_clipping_mod])
    def train(msg: Message, context: Context) -> Message:
        started = time.perf_counter()
        cfg, sent = message_config(msg, context)
        data = _client_data(cfg, context, sent)
        model = build_global_model(data.sequences, cfg.model, msg.content["arrays"].to_torch_state_dict())
        result, privacy, reason, update = _train_round(model, data, cfg, int(sent[ROUND_KEY]), context, sent)
        if result is None:  # declined (privacy budget): no update, and why
            metrics = MetricRecord({"num-examples": 0, "partition-id": data.client, "declined": 1, **privacy})
            return Message(RecordDict({"metrics": metrics, "status": ConfigRecord({"reason": reason})}), reply_to=msg)
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
        arrays = ArrayRecord(model.state_dict() if update is None else update)
        metrics["seconds"] = time.perf_counter() - started  # all of this client's work for the round
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Metric sums and the number of targets, so the server divides once over all clients."""
        cfg, sent = message_config(msg, context)
        data = _client_data(cfg, context, sent)
        model = build_global_model(data.sequences, cfg.model, msg.content["arrays"].to_torch_state_dict())
        sums = evaluate_locally(model, data, cfg.evaluation.protocol, str(sent.get(WHICH_KEY, "valid")))
        metrics = {"num-examples": sums.count, "partition-id": data.client}
        metrics.update({f"sum:{name}": value for name, value in sums.sums.items()})
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


app = make_client_app()
