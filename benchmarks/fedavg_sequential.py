"""FedAvg without Flower, in one process: quick what-if runs on how the silos train (Beauty's FedAvg gap).

    python benchmarks/fedavg_sequential.py NAME [--optimizer adamw|sgd] [--eps 1e-8] [--lr 0.002]
        [--batch-size 16] [--local-epochs 1] [--rounds 8] [--server-lr 1.0] [--server-momentum 0.0]
        [--keep-optimizer] [--item-weighted] [--lr-decay [--lr-floor 0.1]]
        [--out benchmarks/results/fedavg_sequential.json]

The clients' work is the ClientApp's (``federated.task.train_locally`` on each IID silo of Beauty, the benchmark notes'
preset model), the aggregate FedAvg's (the silos' weights averaged by their number of users), optionally through a
server learning rate and momentum (FedAvgM), with item rows averaged by the silos' item counts
(``--item-weighted``, as ``simulate --item-weighted``). Every round trains the 10 silos one after the other on one
thread, so a variant costs minutes, not the Flower simulation's start-up and Ray workers; validation NDCG@10
(history removed) is measured every other round on a fixed sample of 4,000 users (not the benchmark's figure: for
comparing variants).
Curves are merged into the JSON by NAME.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from papers import AMAZON_MODEL

import fedseqrec.federated.task as task
from fedseqrec.data.dataset import DataConfig, load_dataset
from fedseqrec.data.partition import ClientData
from fedseqrec.evaluation.evaluator import evaluate
from fedseqrec.federated.config import LocalTrainingConfig
from fedseqrec.models.config import ModelConfig
from fedseqrec.models.optim import AdamW

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDSEQREC_DATA_DIR", ROOT.parent / "shared" / "data"))


class ClientOptimizers:
    """What ``train_locally`` builds its optimiser with (AdamW as the ClientApp, or plain SGD).

    With ``keep``, each silo's optimiser state (Adam's moments and step count) survives from one round to its next
    instead of starting afresh: a stateful cross-silo client.
    """

    def __init__(self, name: str, eps: float, keep: bool) -> None:
        self.name, self.eps, self.keep = name, eps, keep
        self.states: dict[int, dict] = {}
        self.client: int | None = None
        self.last: torch.optim.Optimizer | None = None

    def __call__(self, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        if self.name == "sgd":
            self.last = torch.optim.SGD(params, lr=lr)
        else:
            self.last = AdamW(params, lr=lr, weight_decay=weight_decay, eps=self.eps)
        if self.keep and self.client in self.states:
            self.last.load_state_dict(self.states[self.client])
            for group in self.last.param_groups:
                group["lr"] = lr  # the round's rate, not the saved one
        return self.last

    def round_done(self) -> None:
        if self.keep and self.last is not None:
            self.states[self.client] = self.last.state_dict()


def round_lr(args: argparse.Namespace, server_round: int) -> float:
    """The clients' rate in a round: constant, or cosine-decayed from --lr to --lr * --lr-floor over the rounds."""
    if not args.lr_decay:
        return args.lr
    progress = (server_round - 1) / max(1, args.rounds - 1)
    return args.lr * (args.lr_floor + (1 - args.lr_floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def row_weights(key: str, value: torch.Tensor, counts: np.ndarray, examples: int, item_rows: bool) -> torch.Tensor:
    """A silo's weight in the average: its examples, or per item row the silo's occurrences of that item
    (--item-weighted: a rare item's row moves as far as the silos that hold it move it, not a tenth of it)."""
    if not item_rows or value.shape[0] < len(counts) or "position" in key:
        return torch.tensor(float(examples), dtype=torch.float64)
    weights = np.full(value.shape[0], 1e-3)  # a row no silo holds: the plain mean of its (negatives-only) moves
    weights[: len(counts)] += counts
    return torch.from_numpy(weights).reshape(-1, *([1] * (value.dim() - 1)))


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(1)
    optimizers = ClientOptimizers(args.optimizer, args.eps, args.keep_optimizer)
    task.adamw = optimizers
    path = str(DATA / "amazon-beauty" / "Beauty.txt")
    ds = load_dataset(DataConfig(data=path, partition="iid", clients=10, seed=0))
    torch.manual_seed(0)
    model = task.build_global_model(ds.sequences, ModelConfig(**AMAZON_MODEL))
    fit = LocalTrainingConfig(
        lr=args.lr, batch_size=args.batch_size, weight_decay=0.0, batching="length", local_epochs=args.local_epochs
    )
    silos = [ClientData(client, ds.sequences, ds.split, users) for client, users in enumerate(ds.partition.clients())]
    counts = [np.asarray(task.item_counts(silo), dtype=np.float64) for silo in silos]
    sample = np.random.default_rng(1).choice(np.arange(1, ds.sequences.n_users + 1), 4000, replace=False)
    velocity, curve, started = None, [], time.perf_counter()
    for server_round in range(1, args.rounds + 1):
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in start.items()}
        weight = {k: torch.zeros((), dtype=torch.float64) for k in start}
        examples, losses = 0, []
        fit = dataclasses.replace(fit, lr=round_lr(args, server_round))
        for client, silo in enumerate(silos):
            model.load_state_dict(start)
            optimizers.client = client
            result = task.train_locally(model, silo, fit, seed=server_round * 100 + client)
            optimizers.round_done()
            for k, v in model.state_dict().items():
                w = row_weights(k, v, counts[client], result.examples, args.item_weighted)
                total[k] += (v.double() - start[k].double()) * w
                weight[k] = weight[k] + w
            examples += result.examples
            losses.append(result.loss)
        delta = {k: total[k] / weight[k] for k in start}
        velocity = delta if velocity is None else {k: args.server_momentum * velocity[k] + delta[k] for k in start}
        model.load_state_dict({k: (start[k].double() + args.server_lr * velocity[k]).to(start[k].dtype) for k in start})
        point = {
            "round": server_round,
            "passes": server_round * args.local_epochs,
            "loss": round(float(np.mean(losses)), 4),
            "seconds": round(time.perf_counter() - started),
        }
        if server_round % 2 == 0 or server_round == 1:
            valid = evaluate(
                model,
                ds.sequences,
                ds.split,
                "valid",
                users=np.sort(sample),
                max_len=50,
                protocol="full-history-removed",
            )
            point["valid_sample"] = round(valid["NDCG@10"], 4)
        print(json.dumps(point), flush=True)
        curve.append(point)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--eps", type=float, default=1e-8)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--server-lr", type=float, default=1.0)
    parser.add_argument("--server-momentum", type=float, default=0.0)
    parser.add_argument("--keep-optimizer", action="store_true", help="each silo keeps its Adam state across rounds")
    parser.add_argument("--lr-decay", action="store_true", help="cosine decay of the clients' rate over the rounds")
    parser.add_argument("--lr-floor", type=float, default=0.1)
    parser.add_argument("--item-weighted", action="store_true", help="average item rows by the silos' occurrences")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fedavg_sequential.json")
    args = parser.parse_args()
    curve = run(args)
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    settings = {k: v for k, v in vars(args).items() if k not in ("name", "out")}
    report[args.name] = {"settings": settings, "curve": curve}
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
