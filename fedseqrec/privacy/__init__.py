"""Differential privacy: the options and the mechanism they choose (``config.py``); accountants behind one function
(``accounting.py``); per-client ledgers and their codec (``ledger.py``); DP-SGD with Opacus (``dpsgd.py``,
``compat.py``) and a client's private round (``client.py``); the server side of each mechanism behind one
interface (``mechanism.py``: none; ``local_dpsgd.py``: DP-SGD at every client; ``dp_fedavg.py``: DP-FedAvg), and
the client-side clipping mod of DP-FedAvg (``clipping_mod.py``)."""
