"""What the configs name for training: the Runner and its checkpoint hook (runner.py), the LR-decay constructor,
the CPU autocast wrapper, the random-state and reconstruction hooks."""
