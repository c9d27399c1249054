"""The server side of SecAgg+ (Bell et al., CCS 2020) for the federation loop's train exchange: the server learns the
sum of the round's (quantised) updates and never one client's.

The clients run Flower's own ``secaggplus_mod`` (:mod:`fedseqrec.client.secure_aggregation`); this module speaks
its four stages with the loop's messages, as Flower's ``SecAggPlusWorkflow`` does for its legacy strategies (which
our loop does not use), with Flower's building blocks for everything cryptographic:

1. setup — each client makes two key pairs and sends the public keys;
2. share keys — each client gets its neighbours' public keys, Shamir-shares its mask seed and first private key
   among them (threshold t) and sends the shares encrypted for each neighbour;
3. collect masked vectors — each client gets the shares addressed to it and the train message, trains, and sends
   ``[w, w·x]`` quantised to [0, 2^22) and masked (its own mask plus one pairwise mask per neighbour) mod 2^32;
4. unmask — the server says which clients' vectors it adds up (those it accepted) and which it drops; each client
   left sends its share of every accepted neighbour's mask seed and of every dropped neighbour's private key.

A client is either accepted (its own mask removed) or dropped (its pairwise masks removed), never both: that is
what keeps one client's vector hidden. Replies the loop refuses after stage 3 (bad metrics, a shrunk ledger) are
dropped that way. The loop checks everything it needs before :meth:`SecureRound.aggregate` asks for the shares, so
a round that must fail (a silo's noise share missing) fails before the server can see any sum.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import parameters_mod
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from fedseqrec.errors import RunError
from fedseqrec.federated.config import RunConfig
from fedseqrec.federated.messages import SECURE_SUM_KEY, summed_keys
from fedseqrec.federated.task import largest_client
from fedseqrec.privacy.quantised_sum import rounding_bound
from fedseqrec.server.replies import ReplyRules, update_problem

QUANTIZATION_RANGE = 2**22  # Flower's defaults: values quantised to 22 bits, masks and sums mod 2^32
MODULUS_RANGE = 2**32
MOST_LEVELS = 2**30  # Flower's rounding holds a quantised value in an int32
UPDATES_RANGE = 8.0  # --secagg-clipping-range's default for model updates (Flower's)
COUNTS_RANGE = 1024.0  # and for the sums of a co-occurrence release


@dataclass(frozen=True)
class SecAggSettings:
    shares: int | None  # per client, itself included (None: every client of the round)
    threshold: float  # share of the shares needed to reconstruct a secret
    clipping_range: float
    max_weight: float  # the largest weight a client may have (1 when replies are sums)
    clients: int = 3  # clients a round (what the description is for)
    levels: int = QUANTIZATION_RANGE  # quantisation levels over [-clipping_range, clipping_range]

    @property
    def step(self) -> float:
        return 2 * self.clipping_range / self.levels

    def round_shape(self, clients: int) -> tuple[int, int]:
        """(shares, threshold) for a round of ``clients``: an odd number of shares (a client and as many neighbours
        on each side of it), at most everyone, and a threshold of at least 2."""
        shares = clients if self.shares is None else min(self.shares, clients)
        if shares < clients and shares % 2 == 0:
            shares += 1
        return shares, max(2, round(self.threshold * shares))

    def describe(self) -> dict:
        shares, threshold = self.round_shape(self.clients)
        return {
            "protocol": "SecAgg+ (Bell et al., 2020): Flower's secaggplus_mod at the clients, its stages at the server",
            "shares": shares,
            "threshold": threshold,
            "dropouts_tolerated": f"each client's secrets survive while {threshold} of its {shares} neighbours "
            f"(itself included) stay: up to {shares - threshold} may drop out",
            "collusion": f"the server learns nothing of one client's update unless it colludes with {threshold} or "
            "more clients of the round",
            "clipping_range": self.clipping_range,
            "quantisation_levels": self.levels,
            "quantisation_step": self.step,
            "max_weight": self.max_weight,
        }


def secure_settings(cfg: RunConfig, weights: bool, clients: int, users: int, warn: Callable[[str], None]):
    """The run's settings. Replies that are sums weigh 1 each; weights are averaged by examples (users with a
    target), so a client weighs at most its users: the largest client of the partition, if the server can compute
    it, else every user of the federation (--secagg-max-weight sets it; a tight bound keeps quantisation fine)."""
    option = cfg.secure
    max_weight = 1 if not weights else option.secagg_max_weight
    if max_weight is None:
        max_weight = largest_client(cfg, clients) or users or 2**16
    per_round = cfg.algorithm.clients_per_round or clients
    range_ = clipping_range(option)
    settings = SecAggSettings(option.secagg_shares, option.secagg_threshold, range_, max_weight, per_round)
    warn(f"secure aggregation (SecAgg+): {settings.describe()['dropouts_tolerated']}; max weight {max_weight}")
    return settings


def update_rounding(cfg: RunConfig, model) -> float:
    """What SecAgg+'s quantisation of a round's replies can add to the ℓ2 sensitivity of their sum (0 without it):
    one step of its 2^22 levels for each trainable value (``privacy.quantised_sum``)."""
    if not cfg.secure.secure_aggregation:
        return 0.0
    values = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return rounding_bound(values, clipping_range(cfg.secure), QUANTIZATION_RANGE)


def release_settings(cfg: RunConfig, clients: int, warn: Callable[[str], None]) -> SecAggSettings:
    """The settings of a one-release sum over every silo (``--model cooc``): replies are sums (weight 1), values are
    sums of counts, quantised as finely as a sum over ``clients`` allows (the finer, the less the quantisation adds
    to the release's sensitivity: ``privacy.quantised_sum``)."""
    option = cfg.secure
    range_ = clipping_range(option, counts=True)
    settings = SecAggSettings(option.secagg_shares, option.secagg_threshold, range_, 1, clients, most_levels(clients))
    warn(
        f"secure aggregation (SecAgg+): {settings.describe()['dropouts_tolerated']}; values clipped to +-{range_:g}, "
        f"{settings.levels} levels"
    )
    return settings


def clipping_range(option, counts: bool = False) -> float:
    """``--secagg-clipping-range``, or its default for model updates or for (``counts``) a release's sums over a
    silo's users, each user adding at most 1 to a value."""
    if option.secagg_clipping_range is not None:
        return option.secagg_clipping_range
    return COUNTS_RANGE if counts else UPDATES_RANGE


def most_levels(clients: int) -> int:
    """The finest quantisation a sum of ``clients`` vectors allows: the largest power of two of levels whose sum over
    the clients stays below the modulus (2^32), at most 2^30."""
    return min(MOST_LEVELS, 2 ** (32 - math.ceil(math.log2(clients + 1))))


def aggregate_bound(clients: int, total_weight: float, clipping_range: float, sums: bool, levels: int) -> float:
    """The largest element-wise difference between the securely aggregated result and the exact one (when nothing
    was clipped): each client's quantised value is off by less than one step (stochastic rounding); a weighted mean
    also has each weight rounded to 1/levels, which moves it by at most half a step per client."""
    step = 2 * clipping_range / levels
    return clients * step if sums else clients * 1.5 * step / total_weight


@dataclass
class _State:
    nodes: list[int]  # the round's nodes, in the order asked
    shares: int
    threshold: int
    neighbours: dict[int, set[int]]
    public_keys: dict[int, list[bytes]] = field(default_factory=dict)
    keyed: set[int] = field(default_factory=set)  # nodes whose shares reached their neighbours: masks involve them
    masked: dict[int, list[np.ndarray]] = field(default_factory=dict)  # node -> its masked vector


class SecureRound:
    """One round's train exchange under SecAgg+: :meth:`exchange` (stages 1-3) gives the replies to check,
    :meth:`aggregate` (stage 4) the sum of the accepted ones."""

    def __init__(self, grid, settings: SecAggSettings, expected: ArrayRecord, rules: ReplyRules, warn):
        """``expected``: what a reply's arrays hold (the global model's, or the trainable ones for a sum)."""
        self.grid, self.settings, self.rules, self.warn = grid, settings, rules, warn
        self.sums = not rules.weights
        self.keys = summed_keys(expected)
        self.shapes = [tuple(expected[k].shape) for k in self.keys]
        self.state: _State | None = None
        self.seconds: dict[str, float] = {}  # each stage's wall time: what SecAgg+ costs the round
        self.timeout: float | None = None
        self.group = ""

    def exchange(self, messages: list[Message], timeout: float | None) -> tuple[list[Message], list[Message]]:
        """Stages 1-3 around the loop's train messages: (the train messages sent, their replies)."""
        self.timeout, self.group = timeout, messages[0].metadata.group_id if messages else ""
        nodes = [m.metadata.dst_node_id for m in messages]
        shares, threshold = self.settings.round_shape(len(nodes))
        self.state = state = _State(nodes, shares, threshold, _neighbours(nodes, shares))
        answered = self._send("setup", {n: {Key.STAGE: Stage.SETUP, **self._setup_config(len(nodes))} for n in nodes})
        state.public_keys = {n: [c[Key.PUBLIC_KEY_1], c[Key.PUBLIC_KEY_2]] for n, c in answered.items()}
        self._check(set(answered), set(answered), "setup")
        answered = self._send("share keys", {n: self._public_keys_for(n) for n in state.public_keys})
        state.keyed = set(answered)
        self._check(state.keyed, state.keyed, "share keys")
        forward = _forwarded(answered, state.keyed)
        train = [
            self._with_shares(m, *forward[m.metadata.dst_node_id])
            for m in messages
            if m.metadata.dst_node_id in state.keyed
        ]
        started = time.perf_counter()
        replies = list(self.grid.send_and_receive(train, timeout=timeout)) if train else []
        self.seconds["train and mask"] = round(time.perf_counter() - started, 3)
        for reply in replies:
            problem = None if reply.has_error() else self._take_vector(reply)
            if problem:
                self.warn(f"node {reply.metadata.src_node_id}: masked vector refused: {problem}")
        return train, replies

    def combined(self, accepted: list[Message], current: ArrayRecord, server_round: int, resume: str):
        """([the accepted replies' aggregate as one reply], the round's figures): the strategy aggregates it as any
        reply, and it is checked as any."""
        started = time.perf_counter()
        reply, figures = self.aggregate(accepted, current)
        clipped = sum(int(r.content["metrics"].get("secagg-clipped", 0)) for r in accepted)
        if clipped:
            self.warn(
                f"round {server_round}: secure aggregation clipped {clipped} values to "
                f"+-{self.settings.clipping_range:g} (raise --secagg-clipping-range)"
            )
        problem = update_problem(reply, self.rules, current) if reply is not None else None
        if problem is not None:
            raise RunError(f"round {server_round}: the securely aggregated update is unusable: {problem}; {resume}")
        figures.update(clipped=clipped, unmask_seconds=round(time.perf_counter() - started, 3))
        return ([reply] if reply is not None else []), figures

    def aggregate(self, accepted: list[Message], current: ArrayRecord) -> tuple[Message | None, dict]:
        """Stage 4 for the replies the loop accepted: one reply holding their weighted mean (or their sum), and the
        round's figures; (None, figures) when they weigh nothing."""
        state = self.state
        active = {r.metadata.src_node_id for r in accepted} & set(state.masked)
        dead = state.keyed - active
        self._check(state.keyed, active, "unmask")
        requests = {
            n: {
                Key.STAGE: Stage.UNMASK,
                Key.ACTIVE_NODE_ID_LIST: sorted(state.neighbours[n] & active),
                Key.DEAD_NODE_ID_LIST: sorted(state.neighbours[n] & dead),
            }
            for n in active
        }
        collected: dict[int, list[bytes]] = {n: [] for n in state.keyed}
        for config in self._send("unmask", requests).values():
            for owner, share in zip(config[Key.NODE_ID_LIST], config[Key.SHARE_LIST], strict=True):
                collected[owner].append(share)
        started = time.perf_counter()
        weight, total = self._unmasked(active, dead, collected)
        self.seconds["remove masks"] = round(time.perf_counter() - started, 3)
        s = self.settings
        bound = aggregate_bound(len(active), weight, s.clipping_range, self.sums, s.levels)
        figures = {
            "secagg_clients": len(active),
            "secagg_dropped": len(dead),
            "secagg_weight": weight,
            "secagg_bound": bound,
            "stage_seconds": self.seconds,
        }
        examples = sum(int(r.content["metrics"]["num-examples"]) for r in accepted)
        if weight == 0:
            return None, figures
        values = {k: v if self.sums else v / weight for k, v in zip(self.keys, total, strict=True)}
        arrays = {
            k: Array(values[k].astype(current[k].numpy().dtype) if k in values else current[k].numpy())
            for k in current
            if k in values or not self.sums
        }
        metrics = MetricRecord({"num-examples": examples, "train-loss": 0.0, "seconds": 0.0})
        content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics})
        return Message(content, dst_node_id=0, message_type=MessageType.TRAIN), figures

    # --- the stages' messages ---------------------------------------------------------------------------------------

    def _setup_config(self, clients: int) -> dict:
        s, state = self.settings, self.state
        return {
            Key.SAMPLE_NUMBER: clients,
            Key.SHARE_NUMBER: state.shares,
            Key.THRESHOLD: state.threshold,
            Key.CLIPPING_RANGE: float(s.clipping_range),
            Key.TARGET_RANGE: s.levels,
            Key.MOD_RANGE: MODULUS_RANGE,
            Key.MAX_WEIGHT: float(s.max_weight),
        }

    def _public_keys_for(self, node: int) -> dict:
        keys = self.state.public_keys
        return {Key.STAGE: Stage.SHARE_KEYS, **{str(n): keys[n] for n in self.state.neighbours[node] if n in keys}}

    def _with_shares(self, message: Message, sources: list[int], ciphertexts: list[bytes]) -> Message:
        config = {Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: ciphertexts, Key.SOURCE_LIST: sources}
        content = message.content
        run_config = ConfigRecord({**content["config"], SECURE_SUM_KEY: self.sums})
        content = RecordDict({**content, "config": run_config, RECORD_KEY_CONFIGS: ConfigRecord(config)})
        return self._message(message.metadata.dst_node_id, content)

    def _message(self, node: int, content: RecordDict) -> Message:
        return Message(content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=self.group)

    def _send(self, stage: str, configs: dict[int, dict]) -> dict[int, ConfigRecord]:
        """Send each node its stage config; the configs that came back, by node (failures logged)."""
        messages = [self._message(n, RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(c)})) for n, c in configs.items()]
        answered, started = {}, time.perf_counter()
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout)) if messages else []
        self.seconds[stage] = round(time.perf_counter() - started, 3)
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.warn(f"node {node} dropped out of secure aggregation at {stage}: {reply.error.reason}")
            else:
                answered[node] = reply.content.config_records[RECORD_KEY_CONFIGS]
        return answered

    def _take_vector(self, reply: Message) -> str | None:
        """Keep the reply's masked vector if it has the expected shapes; else why not."""
        config = reply.content.config_records.get(RECORD_KEY_CONFIGS)
        if config is None or Key.MASKED_PARAMETERS not in config:
            return "no masked vector"
        vector = [bytes_to_ndarray(b) for b in config[Key.MASKED_PARAMETERS]]
        expected = [(1,), *self.shapes]
        if [tuple(v.shape) for v in vector] != expected:
            return f"{len(vector)} arrays of other shapes than the {len(expected)} expected"
        self.state.masked[reply.metadata.src_node_id] = [v.astype(np.int64) for v in vector]
        return None

    def _check(self, needed: set[int], staying: set[int], stage: str) -> None:
        """Every client whose secrets are ``needed`` must have ``threshold`` neighbours ``staying``."""
        state = self.state
        short = [n for n in sorted(needed) if len(state.neighbours[n] & staying) < state.threshold]
        if short:
            raise RunError(
                f"secure aggregation halted at {stage}: clients of nodes {short[:5]} have fewer than "
                f"{state.threshold} of their {state.shares} neighbours left (too many dropped out)"
            )

    # --- the arithmetic ---------------------------------------------------------------------------------------------

    def _unmasked(self, active: set[int], dead: set[int], collected: dict[int, list[bytes]]) -> tuple[float, list]:
        """(Σ of the weights, Σ weight·x per array) of the active clients."""
        state, mod = self.state, MODULUS_RANGE
        shapes = [(1,), *self.shapes]
        total = [np.zeros(s, dtype=np.int64) for s in shapes]
        for node in active:
            total = [t + v for t, v in zip(total, state.masked[node], strict=True)]
        for node in active | dead:
            if len(collected[node]) < state.threshold:
                raise RunError(f"secure aggregation halted at unmask: too few shares came back for node {node}")
            secret = combine_shares(collected[node])
            if node in active:  # its own mask
                total = [t - m for t, m in zip(total, pseudo_rand_gen(secret, mod, shapes), strict=True)]
                continue
            for other in state.neighbours[node] & active:  # a dropped client's pairwise masks with those summed
                public = bytes_to_public_key(state.public_keys[other][0])
                key = generate_shared_key(bytes_to_private_key(secret), public)
                sign = 1 if node > other else -1
                total = [t + sign * m for t, m in zip(total, pseudo_rand_gen(key, mod, shapes), strict=True)]
        total = parameters_mod(total, mod)
        levels = self.settings.levels
        weight = int(total[0][0]) / levels
        values = dequantize(total[1:], self.settings.clipping_range, levels)
        offset = -(len(active) - 1) * self.settings.clipping_range
        return weight, [v + offset for v in values]


def _neighbours(nodes: list[int], shares: int) -> dict[int, set[int]]:
    """Each node and ``shares // 2`` nodes on each side of it on a random ring (everyone when shares cover all)."""
    ring = list(nodes)
    random.SystemRandom().shuffle(ring)
    half = shares // 2
    return {n: {ring[(i + k) % len(ring)] for k in range(-half, half + 1)} for i, n in enumerate(ring)}


def _forwarded(answered: dict[int, ConfigRecord], keyed: set[int]) -> dict[int, tuple[list[int], list[bytes]]]:
    """(sources, ciphertexts) each node is to receive from the share-keys replies."""
    forward = {n: ([], []) for n in keyed}
    for source, config in answered.items():
        for destination, ciphertext in zip(config[Key.DESTINATION_LIST], config[Key.CIPHERTEXT_LIST], strict=True):
            if destination in forward:
                forward[destination][0].append(source)
                forward[destination][1].append(ciphertext)
    return forward
