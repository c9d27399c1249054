"""Evaluation protocols (a light module: the CLI lists them without importing torch)."""

PROTOCOLS = ("full", "sampled-uniform", "sampled-pop")
