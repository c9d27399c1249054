"""The client side of secure aggregation: Flower's own ``secaggplus_mod`` (SecAgg+), given the reply in the shape it
reads.

Flower's mod speaks the legacy ``FitRes`` layout (``fitres.parameters``, ``fitres.num_examples``); the train handler
replies with the Message API's ``arrays`` and ``metrics``. :func:`secure_aggregation_mod` converts one into the other
between the two, and stays out of the way of every message that is not part of a SecAgg+ round. The arrays go in a
fixed order (floating-point arrays, sorted by name) that the server decodes by; ``metrics`` travel in the clear, the
arrays only masked.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message, MetricRecord
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

from fedseqrec.federated.messages import SECURE_SUM_KEY, summed_keys


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's SecAgg+ mod for the messages of a SecAgg+ round; every other message passes untouched."""
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)

    def legacy_reply(message: Message, ctx: Context) -> Message:
        return _as_fitres(message, call_next(message, ctx), ctx)

    return secaggplus_mod(msg, context, legacy_reply)


def _as_fitres(sent: Message, reply: Message, context: Context) -> Message:
    """The handler's reply with its arrays (zeros when it declined to train) as the legacy FitRes Flower's mod masks,
    weighted by its examples, or by 1 when the server adds replies up as they are."""
    if reply.has_error():
        return reply
    metrics = MetricRecord(dict(reply.content["metrics"]))
    arrays = reply.content.array_records.get("arrays")
    if arrays is None:  # declined (privacy budget): it still takes part in the sum, with nothing and weight 0
        values = [np.zeros_like(sent.content["arrays"][k].numpy()) for k in summed_keys(sent.content["arrays"])]
        weight = 0
    else:
        values = [arrays[k].numpy() for k in summed_keys(arrays)]
        weight = 1 if bool(sent.content["config"].get(SECURE_SUM_KEY, False)) else int(metrics["num-examples"])
    state = context.state.config_records[RECORD_KEY_STATE]
    max_weight, limit = float(state["max_weight"]), float(state["clipping_range"])
    if weight > max_weight:
        raise ValueError(
            f"secure aggregation: this client weighs {weight} examples, more than the server's --secagg-max-weight "
            f"{max_weight:g}; the masked sum would overflow"
        )
    scale = weight / max_weight
    # What quantisation clips (it maps [-range, range] to 2^22 levels): counted so the run can say so.
    metrics["secagg-clipped"] = int(sum(np.count_nonzero(np.abs(v * scale) > limit) for v in values))
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(values), weight, {})
    content = fitres_to_recorddict(fitres, keep_input=False)
    content["metrics"] = metrics
    return Message(content, reply_to=sent)
