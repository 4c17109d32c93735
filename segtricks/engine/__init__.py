"""Training: the loop, its hooks, one ``Training`` per training hash, atomic checkpoints."""
