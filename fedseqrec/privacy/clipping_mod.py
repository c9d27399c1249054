"""The client's side of DP-FedAvg with client-side clipping (kept apart: a ClientApp imports only this)."""

from __future__ import annotations

from flwr.app import Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod


def central_clipping_mod(msg: Message, context, call_next) -> Message:
    """Client side of DP-FedAvg with client-side clipping: Flower's ``fixedclipping_mod`` or
    ``adaptiveclipping_mod`` when the run asks for them, and nothing otherwise."""
    config = msg.content.config_records.get("config")
    if msg.metadata.message_type != "train" or config is None or config.get("central-clipping") != "client":
        return call_next(msg, context)
    if config.get("central-dp") == "fixed":
        return fixedclipping_mod(msg, context, call_next)
    if config.get("central-dp") == "adaptive":
        return adaptiveclipping_mod(msg, context, call_next)
    return call_next(msg, context)
