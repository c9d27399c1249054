"""fedseqrec: federated, differentially private training of sequence recommenders."""

__version__ = "0.9.0"
