"""The tiny federation the federation and privacy tests run: 120 shop users in 3 clients, a one-block model."""

from fedseqrec.runconfig import FederationConfig

TINY = FederationConfig(
    clients=3,
    rounds=3,
    shop_users=120,
    shop_items=80,
    shop_categories=5,
    shop_days=20,
    hidden=16,
    layers=1,
    heads=1,
    inner=32,
    max_len=20,
    batch_size=16,
)
TINY_FLAGS = [
    "--clients", "3", "--shop-users", "120", "--shop-items", "80", "--shop-categories", "5", "--shop-days", "20",
    "--hidden", "16", "--layers", "1", "--heads", "1", "--inner", "32", "--max-len", "20", "--batch-size", "16",
]  # fmt: skip
