"""Running the federation on Flower's deployment engine: certificates and node keys, local SuperLink/SuperNodes."""
