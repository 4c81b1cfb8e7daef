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
import time

NOTICE_AFTER_SECONDS = 1.0

logger = logging.getLogger("fastlora")


@contextlib.contextmanager
def slow_work_notice(message: str, after: float = NOTICE_AFTER_SECONDS):
    """Log ``message`` (level WARNING) if the block runs longer than ``after`` seconds; its seconds count in
    :func:`first_run_seconds`."""
    global _first_run_seconds
    timer = threading.Timer(after, logger.warning, args=(message,))
    timer.daemon = True
    started = time.perf_counter()
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with _TOTAL_LOCK:
            _first_run_seconds += time.perf_counter() - started


_TOTAL_LOCK = threading.Lock()
_first_run_seconds = 0.0


def first_run_seconds() -> float:
    """Seconds this process has spent so far in :func:`slow_work_notice` blocks — compiling: what a timing of
    later work (``sweep --dry-run``) leaves out."""
    return _first_run_seconds
