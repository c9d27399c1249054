"""``--model cooc`` in a federation: the silos count, the server adds up and releases once.

Instead of training rounds, the server asks every client (``query.cooccurrence``, answered by
``federated.cooccurrence``) for sums over its own users:

- without ``--cooc-epsilon``: each silo's exact pair table and item counts; their sum is the plain counted model;
- with it: first each silo's unit-norm item counts, whose sum the server releases with noise and takes the
  ``--cooc-items`` most held items from (the ledger's first record); then each silo's clipped pair vectors over
  those items, whose sum gets noise σ on every pair once (the second record). The arithmetic is
  ``privacy.cooccurrence``'s, the same as ``fedseqrec train`` applies to every user in one process.

Every silo must answer (the release is a sum over every user): a client that fails, or sends sums of the wrong
shape, negative or not finite, stops the run with its reason. The server sees each silo's exact sum before the
noise, the trust of ``--privacy user-level --noise-shares server``. The run folder is the federation's
(``config.json``, one line in ``metrics.jsonl``, ``metrics.json``, ``model.pt`` with ``model_info.json``,
``privacy_report.json``, ``summary.md``), so ``report``, ``recommend``, ``serve`` and ``evaluate`` read it as any.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from scipy import sparse

from fedseqrec.data.tasks import task_of
from fedseqrec.errors import RunError
from fedseqrec.evaluation.evaluator import evaluate, popularity_baseline
from fedseqrec.federated.config import RunConfig
from fedseqrec.federated.cooccurrence import ACTION, COUNTED, ITEMS, PAIRS, PHASE_KEY, SUPPORT
from fedseqrec.federated.task import server_data
from fedseqrec.models.checkpoint import describe
from fedseqrec.models.cooccurrence import ItemCooccurrence
from fedseqrec.models.registry import model_config_for
from fedseqrec.privacy.config import default_delta
from fedseqrec.privacy.cooccurrence import choose_items, public_pairs, release_on_public_pairs, release_pairs
from fedseqrec.privacy.quantised_sum import WHY, quantised_sensitivity
from fedseqrec.results.folder import RunFolder
from fedseqrec.results.privacy_report import write_privacy_report
from fedseqrec.results.summary import summary_markdown
from fedseqrec.server.directory import ClientDirectory
from fedseqrec.server.replies import ReplyRules
from fedseqrec.server.secure_aggregation import SecureRound, release_settings

TRUST = (
    "each silo sums its own users' clipped vectors; the server sees every silo's exact sum and adds the noise once "
    "(as --privacy user-level --noise-shares server)"
)
SECURE_TRUST = (
    "each silo sums its own users' clipped vectors; secure aggregation (SecAgg+) gives the server the total over "
    "the silos only, never one silo's sum (unless it colludes with the reconstruction threshold of silos), and the "
    "server adds the noise once"
)
SPLITS = ("valid", "test")
TIE_BREAK = 1e-6  # the plain model's item counts, below any pair: they order only the items no pair reaches


@dataclass
class CooccurrenceRelease:
    grid: object
    cfg: RunConfig
    folder: RunFolder
    progress: object  # server.loop.Progress (on_round, on_message)

    def run(self) -> dict:
        started = time.perf_counter()
        cfg, say = self.cfg, self.progress.on_message
        ds = server_data(cfg)
        seq = ds.sequences
        model_cfg = model_config_for(seq, cfg.model)
        self.nodes = self._all_clients()
        say(f"{len(self.nodes)} clients connected: counting the co-occurrence model in every silo")
        self.secure = release_settings(cfg, len(self.nodes), say) if cfg.secure.secure_aggregation else None
        self.secured: dict[str, dict] = {}  # each securely added phase's figures
        cooc, privacy, public_only = cfg.cooccurrence, None, None
        if cooc.cooc_epsilon is None:
            model = self._counted(model_cfg, seq.n_items + 1)
        elif cooc.cooc_public_users > 0:
            model, privacy, public_only = self._on_public_pairs(ds, model_cfg)
        else:
            rng = np.random.default_rng(secrets.randbits(64))  # the noise must not follow --seed
            delta = default_delta(seq.n_users)
            counts = self._summed(ITEMS, {}, {"counts": (seq.n_items + 1,)})["counts"]
            choice = choose_items(
                counts, cooc.cooc_epsilon, delta, cooc.items(), cooc.cooc_item_noise, cfg.privacy.accountant, rng,
                self._sensitivity(len(counts)),
            )  # fmt: skip
            k = len(choice.chosen)
            pairs = k * (k - 1) // 2
            upper = self._summed(PAIRS, {"chosen": choice.chosen}, {"pairs": (pairs,)})["pairs"]
            total = np.zeros((k, k))
            total[np.triu_indices(k, k=1)] = upper
            model, privacy = release_pairs(
                choice, total, cooc.cooc_window, model_cfg, delta, cfg.privacy.accountant, rng, self._sensitivity(pairs)
            )
            say(f"released: {k} items chosen, σ = {choice.sigma:.3f} on their pairs, ε = {privacy['max_epsilon']:.3f}")
        return self._finish(model, privacy, public_only, ds, time.perf_counter() - started)

    def _on_public_pairs(self, ds, model_cfg) -> tuple[ItemCooccurrence, dict, ItemCooccurrence]:
        """With users declared public: their pairs, counted here (public data, which the server holds to evaluate),
        choose the pairs released; the silos send their other users' clipped sums over those pairs."""
        cfg, cooc = self.cfg, self.cfg.cooccurrence
        seq, split = ds.sequences, ds.split
        pairs = public_pairs(seq, split, cooc.cooc_public_users, cfg.data.seed, cooc.cooc_window)
        total = self._summed(SUPPORT, {"keys": pairs.keys}, {"pairs": (len(pairs.keys),)})["pairs"]
        found = release_on_public_pairs(
            pairs, total, seq, split, cooc.cooc_epsilon, default_delta(seq.n_users), cooc.cooc_window, model_cfg,
            cfg.privacy.accountant, np.random.default_rng(secrets.randbits(64)), cfg.evaluation.protocol,
            task_of(cfg.data.task).selection, self._sensitivity(len(pairs.keys)),
        )  # fmt: skip
        self.progress.on_message(
            f"released: {len(pairs.keys):,} pairs the public users hold, ε = {found[1]['max_epsilon']:.3f}"
        )
        return found

    def _all_clients(self) -> dict[int, int]:
        """partition → node of every client (the release needs them all)."""
        directory = ClientDirectory(self.grid, self.progress.on_message)
        directory.available(max(self.cfg.algorithm.min_clients, 1))
        expected = self.cfg.data.clients or directory.num_partitions or 0
        nodes = directory.wait_for(expected)
        if len(nodes) < expected:
            raise RunError(
                f"{len(nodes)} of {expected} clients connected: the co-occurrence release counts every silo's users"
            )
        return dict(sorted(nodes.items()))

    def _sensitivity(self, values: int) -> float:
        """The ℓ2 sensitivity of a sum of ``values`` values: 1 (each user's vector has norm ≤ 1), plus what
        secure aggregation's quantisation can add (``privacy.quantised_sum``)."""
        s = self.secure
        if s is None:
            return 1.0
        found = quantised_sensitivity(1.0, values, s.clipping_range, s.levels)
        if found > 1.05:  # the noise grows with it: a smaller range (or fewer silos) quantises finer
            self.progress.on_message(
                f"secure aggregation's quantisation raises the noise on {values:,} values by {found - 1:.1%}: "
                f"a smaller --secagg-clipping-range than {s.clipping_range:g} lowers it (values above it are clipped)"
            )
        return found

    def _messages(self, phase: str, arrays: dict[str, np.ndarray]) -> list[Message]:
        config = ConfigRecord({**self.cfg.to_run_config(), "out": str(self.folder.path.resolve()), PHASE_KEY: phase})
        content = {"config": config}
        if arrays:
            content["arrays"] = ArrayRecord({name: Array(value) for name, value in arrays.items()})
        return [
            Message(RecordDict(content), dst_node_id=node, message_type=f"{MessageType.QUERY}.{ACTION}")
            for node in self.nodes.values()
        ]

    def _ask(self, phase: str, arrays: dict[str, np.ndarray]) -> list[tuple[int, Message]]:
        messages = self._messages(phase, arrays)
        replies = list(self.grid.send_and_receive(messages, timeout=self.cfg.algorithm.round_timeout))
        return self._answered(phase, messages, replies)

    def _answered(self, phase: str, messages: list[Message], replies: list[Message]) -> list[tuple[int, Message]]:
        """(partition, reply) of every silo, in partition order; a silo that did not answer, or failed, stops the
        release."""
        partition_of = {node: partition for partition, node in self.nodes.items()}
        asked = {m.metadata.message_id: partition_of[m.metadata.dst_node_id] for m in messages}  # ids set when sent
        found = ((asked.get(r.metadata.reply_to_message_id), r) for r in replies)  # (an error for no message: None)
        answered = sorted(((p, r) for p, r in found if p is not None), key=lambda pair: pair[0])
        missing = sorted(set(self.nodes) - {partition for partition, _ in answered})
        if missing:
            raise RunError(f"co-occurrence {phase}: clients {missing} did not answer; every silo's users are counted")
        for partition, reply in answered:
            if reply.has_error():
                raise RunError(f"co-occurrence {phase}: client {partition} failed: {reply.error.reason}")
        return answered

    def _summed(self, phase: str, arrays: dict, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
        """The silos' sums of ``phase`` added up, each checked: the named arrays, of these shapes, ≥ 0, finite."""
        if self.secure is not None:
            return self._securely_summed(phase, arrays, shapes)
        total = {name: np.zeros(shape) for name, shape in shapes.items()}
        for partition, reply in self._ask(phase, arrays):
            for name, shape in shapes.items():
                total[name] += _counts(reply, name, shape, f"co-occurrence {phase}: client {partition}")
        return total

    def _securely_summed(self, phase: str, arrays: dict, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
        """The silos' sums of ``phase`` added up under SecAgg+: the server learns the total only. Every silo must
        send a masked vector of the expected shapes, or the release stops before anything is unmasked."""
        expected = ArrayRecord({name: Array(np.zeros(shape)) for name, shape in shapes.items()})
        say = self.progress.on_message
        secure = SecureRound(self.grid, self.secure, expected, ReplyRules.for_arrays(expected, weights=False), say)
        sent, replies = secure.exchange(self._messages(phase, arrays), self.cfg.algorithm.round_timeout)
        answered = self._answered(phase, sent, replies)
        node_of = dict(self.nodes)
        unusable = [partition for partition, _ in answered if node_of[partition] not in secure.state.masked]
        if unusable:
            raise RunError(f"co-occurrence {phase}: clients {unusable} sent no usable masked vector")
        reply, figures = secure.aggregate([reply for _, reply in answered], expected)
        clipped = sum(int(r.content["metrics"].get("secagg-clipped", 0)) for _, r in answered)
        if clipped:
            limit = self.secure.clipping_range
            say(f"co-occurrence {phase}: secure aggregation clipped {clipped} values to +-{limit:g} (silos' sums)")
        self.secured[phase] = {**figures, "clipped": clipped}
        total = {name: reply.content["arrays"][name].numpy().astype(np.float64) for name in shapes}
        if not all(np.all(np.isfinite(value)) for value in total.values()):
            raise RunError(f"co-occurrence {phase}: the securely added sums are not finite")
        return total

    def _counted(self, model_cfg, size: int) -> ItemCooccurrence:
        """The plain model: the silos' exact pair tables and item counts, added up."""
        firsts, seconds, values, items = [], [], [], np.zeros(size)
        for partition, reply in self._ask(COUNTED, {}):
            who = f"co-occurrence {COUNTED}: client {partition}"
            sent = reply.content.array_records.get("arrays")
            pairs = len(sent["value"].numpy()) if sent is not None and "value" in sent else -1
            first, second = (_counts(reply, name, (pairs,), who).astype(np.int64) for name in ("first", "second"))
            if np.any((second >= size) | (first >= second)):
                raise RunError(f"{who} sent pairs outside the catalogue (each pair once, first < second < {size})")
            firsts.append(first)
            seconds.append(second)
            values.append(_counts(reply, "value", (pairs,), who))
            items += _counts(reply, "items", (size,), who)
        table = sparse.coo_matrix(
            (np.concatenate(values), (np.concatenate(firsts), np.concatenate(seconds))), shape=(size, size)
        ).tocsr()  # duplicates summed
        table.eliminate_zeros()
        table = table.tocoo()
        return ItemCooccurrence.from_pairs(model_cfg, table.row, table.col, table.data, TIE_BREAK * items)

    def _finish(self, model: ItemCooccurrence, privacy: dict | None, public_only, ds, seconds: float) -> dict:
        cfg, folder = self.cfg, self.folder
        seq, split = ds.sequences, ds.split
        task = task_of(cfg.data.task)
        options = {"max_len": model.cfg.max_len, "protocol": cfg.evaluation.protocol}
        figures = {which: evaluate(model, seq, split, which, **options) for which in SPLITS}
        record = {"round": 1, "clients": len(self.nodes), "failed": [], "valid": figures["valid"]}
        record["seconds"] = round(seconds, 3)
        if privacy is not None:
            record["epsilon_max"] = privacy["max_epsilon"]
        folder.append_round(record)
        info = {"round": 1, f"valid_{task.selection}": figures["valid"].get(task.selection)}
        folder.save_model(model.state_dict(), info)
        folder.write_json("model.json", describe(cfg.model.name, model, seq))
        results = {
            "model": cfg.model.name,
            "task": cfg.data.task,
            "strategy": "sum (one release)",
            "partition": cfg.data.partition,
            "evaluation": cfg.evaluation.mode,
            "protocol": cfg.evaluation.protocol,
            "rounds_run": 1,
            "stopped": None,
            "best_round": 1,
            "release": {"rule": "last", "round": 1, "reads_validation": False, "covered_by_guarantee": True},
            **figures,
            "last": {"round": 1, **figures},  # the release is the last (and only) model
            "params": 0,
            "seconds": round(seconds, 2),
            "popularity": popularity_baseline(seq, split, model.cfg.max_len, cfg.evaluation.protocol),
        }
        if public_only is not None:  # the public users' model alone: what the private users' release adds to
            results["initial"] = {which: evaluate(public_only, seq, split, which, **options) for which in SPLITS}
        if privacy is not None:
            results["privacy"] = {**privacy, "trust": TRUST, "silos": len(self.nodes)}
            if self.secure is not None:
                secure = {**self.secure.describe(), "sensitivity": WHY, "phases": self.secured}
                results["privacy"].update(trust=SECURE_TRUST, secure_aggregation=secure)
        folder.write_json("metrics.json", results)
        if privacy is not None:
            write_privacy_report(folder.path)  # (from metrics.json, ε recomputed from the ledger)
        folder.write_text("summary.md", summary_markdown(results, folder.rounds(), task))
        self.progress.on_round(record)
        return results


def _counts(reply: Message, name: str, shape: tuple, who: str) -> np.ndarray:
    """The reply's array ``name``, refused unless it has ``shape`` and holds finite values ≥ 0 (sums of counts)."""
    sent = reply.content.array_records.get("arrays")
    value = sent[name].numpy() if sent is not None and name in sent else None
    if value is None or value.shape != shape or not np.all(np.isfinite(value)) or np.any(value < 0):
        got = "nothing" if value is None else f"shape {value.shape}"
        raise RunError(f"{who} sent {got} for {name!r}; expected {shape} of finite counts ≥ 0")
    return value
