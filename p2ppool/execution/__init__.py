"""p2ppool.execution."""
