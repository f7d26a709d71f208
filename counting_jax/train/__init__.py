"""Training: state, optimiser, steps, sharding, checkpoints, logging, loop."""
