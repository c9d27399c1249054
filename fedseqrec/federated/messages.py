"""Keys the server adds to the run config in a message's ConfigRecord; the ClientApp reads them back."""

ROUND_KEY = "server-round"  # the round a train message belongs to
WHICH_KEY = "which"  # evaluation: "valid" or "test"
# A pooled simulated node (see server.directory.NodePool) learns from each message which client it acts as.
PARTITION_KEY, PARTITIONS_KEY = "partition-id", "num-partitions"
SERVER_KEYS = (ROUND_KEY, WHICH_KEY, PARTITION_KEY, PARTITIONS_KEY)
