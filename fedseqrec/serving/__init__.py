"""Serving recommendations: the Python API (recommender.py) and the HTTP service (app.py)."""
