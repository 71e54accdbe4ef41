"""What the configs name for training: the LR-decay constructor, the CPU autocast wrapper, hooks."""
