"""Sequence recommenders behind one interface (base.py), a registry by name (registry.py), their
configuration (config.py, importable without torch), batching, training and checkpoints."""
