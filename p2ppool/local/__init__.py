"""p2ppool.local."""
