"""Evaluation protocols (a light module: the CLI lists them without importing torch).

- ``full``: the target ranked against every item (RecBole's sequential protocol: a user's earlier items stay in
  the ranking);
- ``full-history-removed``: against every item except the user's own earlier items (the protocol of the S3-Rec,
  ICLRec and BSARec code that published figures on the Amazon benchmarks use); the target itself is never
  removed, even when the user had it before;
- ``sampled-uniform`` / ``sampled-pop``: against 100 sampled negatives, for comparison with older papers.

Results carry the protocol that produced them; figures of different protocols are not comparable.
"""

PROTOCOLS = ("full", "full-history-removed", "sampled-uniform", "sampled-pop")
