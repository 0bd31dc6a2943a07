"""Training: the pure-torch step and loop, checkpoints, and the Ray Train wiring around them."""
