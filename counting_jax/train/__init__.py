"""Training: state, optimiser, steps, sharding (devices and hosts), checkpoints,
logging, loop, tiled full-resolution prediction."""
