"""Centralized training, the baseline of every federated run (``fedseqrec train``): its options (``config.py``)
and the training loop with early stopping (``training.py``)."""
