"""p2ppool.cluster."""
