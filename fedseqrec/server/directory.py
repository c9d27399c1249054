"""Which node serves which client, and which clients a round asks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict


def choose_clients(available: list[int], per_round: int | None, seed: int, server_round: int) -> list[int]:
    """The round's clients: all of them, or ``per_round`` drawn without replacement, by (seed, round)."""
    available = sorted(available)
    if per_round is None or per_round >= len(available):
        return available
    rng = np.random.default_rng([seed, server_round])
    return sorted(rng.choice(available, size=per_round, replace=False).tolist())


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


class ChosenNodes:
    """A view of the grid that offers only the nodes the loop chose, so a Flower strategy's ``configure_*``
    (which samples from ``get_node_ids``) addresses exactly them."""

    def __init__(self, grid, node_ids: Iterable[int]):
        self._grid, self._ids = grid, list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._ids)

    def __getattr__(self, name: str):
        return getattr(self._grid, name)
