"""The client's side of DP-FedAvg with client-side clipping (kept apart: a ClientApp imports only this)."""

from __future__ import annotations

from flwr.app import Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

from fedseqrec.privacy.config import DP_FEDAVG


def central_clipping_mod(msg: Message, context, call_next) -> Message:
    """Client side of DP-FedAvg with client-side clipping: Flower's ``fixedclipping_mod`` or
    ``adaptiveclipping_mod`` when the run asks for them, and nothing otherwise."""
    config = msg.content.config_records.get("config")
    if msg.metadata.message_type != "train" or config is None or config.get("privacy") != DP_FEDAVG:
        return call_next(msg, context)
    if config.get("central-clipping") != "client":
        return call_next(msg, context)
    clipping = adaptiveclipping_mod if config.get("central-norm") == "adaptive" else fixedclipping_mod
    return clipping(msg, context, call_next)
