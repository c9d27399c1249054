"""Faults the tests (and the audit benchmark) inject into a federation from the outside: nothing in the package
can switch a mechanism off, so a broken mechanism is built here, as a ClientApp mod."""

from __future__ import annotations

import sys

from ray import cloudpickle  # the pickler Ray sends tasks with


def noise_off(msg, context, call_next):
    """A ClientApp mod that breaks DP-SGD: while the client trains, Opacus is handed σ = 0, but the round is
    planned, and its ledger written, with the configured σ — a mechanism that lies about its noise."""
    from fedseqrec.privacy import dpsgd

    honest = dpsgd.make_private

    def without_noise(model, optimizer, loader, noise_multiplier, *args, **kwargs):
        return honest(model, optimizer, loader, 0.0, *args, **kwargs)

    dpsgd.make_private = without_noise
    try:
        return call_next(msg, context)
    finally:
        dpsgd.make_private = honest


def broken_client_app():
    """The ClientApp with DP-SGD's noise off (Ray's workers get this module by value: it is not installed)."""
    return client_app_with(noise_off)


def _client_zero_says(msg, context, call_next, change):
    """Client 0's training reply, with ``change`` made to its metrics (every other reply as it was)."""
    from flwr.app import MetricRecord

    reply = call_next(msg, context)
    if reply.has_error() or msg.metadata.message_type != "train":
        return reply
    if int(reply.content["metrics"]["partition-id"]) != 0:
        return reply
    metrics = dict(reply.content["metrics"])
    change(metrics)
    reply.content["metrics"] = MetricRecord(metrics)
    return reply


def forgetful_ledger(msg, context, call_next):
    """Client 0 reports an empty ledger and ε = 0 after training (its ledger file on disk holds the truth)."""

    def forget(metrics):
        metrics.update({"epsilon": 0.0, "ledger-round": [], "ledger-noise": [], "ledger-rate": [], "ledger-steps": []})

    return _client_zero_says(msg, context, call_next, forget)


def quiet_ledger(msg, context, call_next):
    """Client 0 claims its latest round added σ = 1e9 (a tiny ε); its ledger file on disk holds the truth."""

    def claim(metrics):
        metrics.update({"epsilon": 0.1, "ledger-noise": [*metrics["ledger-noise"][:-1], 1e9]})

    return _client_zero_says(msg, context, call_next, claim)


def timeless(msg, context, call_next):
    """Client 0's replies lose their `seconds` (the server read it unchecked and stopped with an internal error)."""
    return _client_zero_says(msg, context, call_next, lambda metrics: metrics.pop("seconds"))


def client_app_with(mod):
    """The ClientApp with ``mod`` (one of this module's), reaching Ray's workers by value."""
    from fedseqrec.client.client_app import make_client_app

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return make_client_app(mods=[mod])
