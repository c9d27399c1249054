"""The server of a federation: the Flower ServerApp (``server_app.py``), run planning before anything starts
(``planning.py``), the round loop (``loop.py``), the node directory and client sampling (``directory.py``),
evaluation of the global model (``evaluation.py``) and aggregation strategies with their resumable state
(``strategies.py``)."""
