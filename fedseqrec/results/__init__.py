"""A run's results on disk and for people, above the privacy layer and below the server: the run folder
(``folder.py``: config, rounds log, resume state, weights), the summaries (``summary.py``) and the privacy report
with its plots (``privacy_report.py``), which ``fedseqrec report`` recomputes from a folder."""
