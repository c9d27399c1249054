"""A whole federation on one machine through Flower's simulation engine (``engine.py``: ``fedseqrec simulate``)."""
