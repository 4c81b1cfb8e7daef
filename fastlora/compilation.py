"""Notices for work that only a first run does (compiling Numba code): silent when it is quick.

:func:`slow_work_notice` logs one line on the ``fastlora`` logger (shown on stderr unless
logging is configured otherwise) when the work it wraps is still running after
``NOTICE_AFTER_SECONDS``, so a user is never left waiting in silence, whether the on-disk
cache is empty, partly filled or stale.
"""
from __future__ import annotations

import contextlib
import logging
import threading

NOTICE_AFTER_SECONDS = 1.0

logger = logging.getLogger("fastlora")


@contextlib.contextmanager
def slow_work_notice(message: str, after: float = NOTICE_AFTER_SECONDS):
    """Log ``message`` (level WARNING) if the block runs longer than ``after`` seconds."""
    timer = threading.Timer(after, logger.warning, args=(message,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
