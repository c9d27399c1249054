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
    from fedseqrec.client.client_app import make_client_app

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return make_client_app(mods=[noise_off])
