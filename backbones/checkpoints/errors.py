"""The errors of checkpoint reading and loading: one line each, naming the file and the fix.

This module imports nothing, so that any part of the project can raise or catch these errors without
registering or changing anything.
"""


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used, with the reason and the fix in the message."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist."""
