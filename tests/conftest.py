"""Shared test settings."""
import logging
from collections.abc import Iterator

import pytest
import torch
from mmengine.logging import MMLogger


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_loggers() -> Iterator[None]:
    """Forget the mmengine loggers a test made: a tool run in-process leaves its logger current, with a
    handler on that test's captured (then closed) stream, and the next tool run would log through it."""
    yield
    for logger in MMLogger._instance_dict.values():
        for handler in logger.handlers[:]:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
    MMLogger._instance_dict.clear()
