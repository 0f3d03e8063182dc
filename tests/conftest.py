"""Suite-wide pytest settings: Hypothesis profiles, and logging put back.

The "ci" profile is loaded by default; pick another with HYPOTHESIS_PROFILE=dev.
"""

import logging
import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

settings.register_profile("ci", deadline=None, max_examples=200)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo process-wide logging set-up after each test.

    A CLI command run in-process (``natkit serve``, ``natkit ice -v``)
    configures logging for the whole process; left in place, later tests
    would see records they never asked for.
    """
    loggers = [logging.getLogger(), logging.getLogger("natkit")]
    saved = [(logger, logger.level, list(logger.handlers)) for logger in loggers]
    yield
    for logger, level, handlers in saved:
        logger.setLevel(level)
        logger.handlers[:] = handlers
