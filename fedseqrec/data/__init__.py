"""Data layer: loaders into one canonical interaction table, cleaning, ids, sequences, splits, partitions,
the embedded ``shop`` generator and the prepared-dataset format."""

from fedseqrec.data.dataset import DataConfig, Dataset, load_dataset
from fedseqrec.data.partition import Partition, partition_users
from fedseqrec.data.sequences import SequenceData, Vocabulary
from fedseqrec.data.shop import ShopConfig, generate_shop
from fedseqrec.data.splits import Split, leave_one_out_split, temporal_split

__all__ = [
    "DataConfig",
    "Dataset",
    "Partition",
    "SequenceData",
    "ShopConfig",
    "Split",
    "Vocabulary",
    "generate_shop",
    "leave_one_out_split",
    "load_dataset",
    "partition_users",
    "temporal_split",
]
