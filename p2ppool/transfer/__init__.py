"""p2ppool.transfer."""
