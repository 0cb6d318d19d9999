"""p2ppool.pool."""
