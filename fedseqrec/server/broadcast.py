"""What the server sends each chosen client in a training round under ``--download-compression``.

The server keeps the broadcast copy: the weights every client that trained in the last round now holds. Each
round, if a chosen client holds that copy, the change from the copy to the global model is encoded once (fp16, int8
or int4, ``fedseqrec.federated.compression``) and the copy moves by its decoded value, exactly as those clients'
copies do; the other chosen clients get the moved copy whole, in float32. Without such a client the copy becomes
the global model itself and everyone gets it whole. The rounding a change leaves out stays in the difference
between the global model and the copy, and goes out with the next change: nothing is lost, only delayed.

Every client thus trains from the same weights, the copy, which differs from the global model by at most one
rounding step of the last change; its update is still applied to the global model. After a restart the server
holds no copy, and the first round sends whole weights.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedseqrec.federated.compression import decode, encode, is_compressible, moved, record_bytes
from fedseqrec.federated.messages import BASE_KEY, VERSION_KEY
from fedseqrec.server.replies import ARRAYS


class Broadcast:
    def __init__(self, mode: str):
        self.mode = mode
        self.copy: dict[str, np.ndarray] | None = None
        self.version = 0  # the round whose clients hold the copy
        self.holders: set[int] = set()
        self.sizes: list[int] = []

    def address(self, messages: list[Message], route: dict[int, int], arrays: ArrayRecord, server_round: int):
        """``messages`` (one a chosen client, ``route``: node → client) each with the arrays its client is sent;
        their bytes are counted for :meth:`figures`."""
        self.sizes = []
        if self.mode == "none":
            self.sizes = [record_bytes(m.content[ARRAYS]) for m in messages]
            return messages
        chosen = {route[m.metadata.dst_node_id] for m in messages}
        change = self._moved(arrays, bool(chosen & self.holders))
        base, self.version = self.version, server_round
        whole = ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in self.copy.items()})
        for message in messages:
            holds = route[message.metadata.dst_node_id] in self.holders and change is not None
            config = {**message.content["config"], VERSION_KEY: server_round, **({BASE_KEY: base} if holds else {})}
            sent = change if holds else whole
            message.content = RecordDict({**message.content, ARRAYS: sent, "config": ConfigRecord(config)})
            self.sizes.append(record_bytes(sent))
        return messages

    def delivered(self, clients: list[int]) -> None:
        """The clients whose training replies were accepted: they hold the copy now."""
        self.holders = set(clients) if self.mode != "none" else set()

    def figures(self) -> dict:
        return {"broadcast_bytes": round(sum(self.sizes) / len(self.sizes))} if self.sizes else {}

    def _moved(self, arrays: ArrayRecord, anyone_holds: bool) -> ArrayRecord | None:
        """The encoded change from the copy to ``arrays``, the copy moved by it (None: no chosen client holds the
        copy, which becomes ``arrays`` itself)."""
        target = {k: arrays[k].numpy() for k in arrays}
        if self.copy is None or not anyone_holds or self.copy.keys() != target.keys():
            self.copy = {k: np.array(v) for k, v in target.items()}
            return None
        difference = {k: t - self.copy[k] if is_compressible(t) else t for k, t in target.items()}
        sent, _ = encode(difference, self.mode)
        self.copy = moved(self.copy, decode(sent, {k: (v.shape, v.dtype) for k, v in self.copy.items()}, self.mode))
        return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in sent.items()})
