"""fedseqrec: federated, differentially private training of sequence recommenders."""

__version__ = "0.10.0"
