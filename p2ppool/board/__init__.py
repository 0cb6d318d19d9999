"""p2ppool.board."""
