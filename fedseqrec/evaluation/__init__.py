"""Ranking metrics (metrics.py) and evaluators (evaluator.py) shared by centralized and federated runs."""
