"""p2ppool.worker."""
