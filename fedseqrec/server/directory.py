"""Which node serves which client, and which clients a round asks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedseqrec.errors import RunError
from fedseqrec.federated.messages import PARTITION_KEY, PARTITIONS_KEY


def choose_clients(available: list[int], per_round: int | None, seed: int, server_round: int) -> list[int]:
    """The round's clients: all of them, or ``per_round`` drawn without replacement, by (seed, round)."""
    available = sorted(available)
    if per_round is None or per_round >= len(available):
        return available
    rng = np.random.default_rng([seed, server_round])
    return sorted(rng.choice(available, size=per_round, replace=False).tolist())


class ClientDirectory:
    """Which node serves which partition, learned by asking each new node once: for deployed nodes, each of which
    holds its own client's data (and for small simulations, one node per client)."""

    def __init__(self, grid, warn: Callable[[str], None]):
        self.grid, self.warn = grid, warn
        self.node_of: dict[int, int] = {}
        self.num_partitions: int | None = None

    def available(self, count: int) -> list[int]:
        """The clients whose nodes are connected (waiting a while for ``count`` of them)."""
        return sorted(self.wait_for(count))

    def route(self, chosen: list[int]) -> dict[int, int]:
        """node id -> the client it serves, for the chosen clients."""
        return {self.node_of[p]: p for p in chosen}

    def address(self, messages: list[Message], route: dict[int, int]) -> list[Message]:
        return messages  # each node knows which client it is

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


class NodePool:
    """A simulation's clients served by a pool of simulated nodes: every simulated node reads the same data, so any
    node can act as any client, and each message names its client (``partition-id``). The server asks no node
    anything before the first round, so start-up does not grow with the number of clients, and the simulation
    keeps a pool of nodes, not one per client."""

    def __init__(self, grid, num_partitions: int, warn: Callable[[str], None]):
        self.grid, self.num_partitions, self.warn = grid, num_partitions, warn

    def _nodes(self, count: int, seconds: float = 120.0) -> list[int]:
        deadline = time.monotonic() + seconds
        nodes = sorted(self.grid.get_node_ids())
        while len(nodes) < count and time.monotonic() < deadline:
            time.sleep(1.0)
            nodes = sorted(self.grid.get_node_ids())
        return nodes

    def available(self, count: int) -> list[int]:
        return list(range(self.num_partitions)) if self._nodes(1) else []

    def route(self, chosen: list[int]) -> dict[int, int]:
        nodes = self._nodes(len(chosen))
        if len(chosen) > len(nodes):
            raise RunError(
                f"{len(chosen)} clients chosen for a round, more than the {len(nodes)} simulated nodes that serve "
                "them: set --client-pool higher"
            )
        return dict(zip(nodes, chosen, strict=False))

    def address(self, messages: list[Message], route: dict[int, int]) -> list[Message]:
        for message in messages:
            # A strategy may give every message the same content: each gets its own, naming its client.
            content = message.content
            named = {PARTITION_KEY: route[message.metadata.dst_node_id], PARTITIONS_KEY: self.num_partitions}
            message.content = RecordDict({**content, "config": ConfigRecord({**content["config"], **named})})
        return messages


class ChosenNodes:
    """A view of the grid that offers only the nodes the loop chose, so a Flower strategy's ``configure_*``
    (which samples from ``get_node_ids``) addresses exactly them."""

    def __init__(self, grid, node_ids: Iterable[int]):
        self._grid, self._ids = grid, list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._ids)

    def __getattr__(self, name: str):
        return getattr(self._grid, name)
