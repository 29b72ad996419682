"""Training loop, configuration, checkpoints, distributed plumbing and logging."""
