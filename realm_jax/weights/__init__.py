"""Where the weights of a run start: initial checkpoints, grafts, checks."""
