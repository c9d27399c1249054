"""The client of a federation: the Flower ClientApp (``client_app.py``), which turns each message into the work of
:mod:`fedseqrec.federated.task` (plain training or client-local DP-SGD, evaluation) on this node's users."""
