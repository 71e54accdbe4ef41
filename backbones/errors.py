"""Every error the project raises for bad input: one line each, naming the file and the fix.

This module imports nothing, so that any part of the project can raise or catch these errors without
registering or changing anything.
"""


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used, with the reason and the fix in the message."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file or folder that a config needs does not exist, or holds no images."""


class DatasetError(ValueError):
    """A dataset file that cannot be used, naming the file and the fix."""


class UsageError(ValueError):
    """A command-line argument or config value that cannot be used, with what to use instead."""
