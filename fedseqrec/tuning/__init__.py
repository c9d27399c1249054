"""Hyper-parameter search (``fedseqrec tune``): Optuna studies whose trials are ``train`` or ``simulate`` runs
(``trials.py``), their search space (``space.py``), the study in its database (``study.py``), an accounted search over
private runs (``private.py``) and what a study leaves (``best.py``)."""
