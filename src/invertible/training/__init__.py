"""Training infrastructure: loops, atomic checkpoints, metrics logging."""
