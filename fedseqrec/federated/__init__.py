"""What a federated run is, below both its server and its clients: the run configuration (``config.py``), the
work on a client's users (``task.py``) and the environment every Flower process runs with (``environment.py``)."""
