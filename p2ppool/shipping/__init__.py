"""p2ppool.shipping."""
