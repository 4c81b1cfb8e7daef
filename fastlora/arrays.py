"""Array-module helpers: code written against ``xp`` runs on numpy (CI) and cupy (GPU)."""
from __future__ import annotations

import sys

import numpy as np


def array_module(*arrays):
    """``cupy`` if any argument is a cupy array (cupy already imported), else ``numpy``."""
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return np


def batched_frobenius_sq(X):
    """Per-task ‖X_t‖²_F of a (T, ...) batch."""
    xp = array_module(X)
    return xp.sum(X.reshape(X.shape[0], -1) ** 2, axis=1)


def reusable(out, like, *inputs):
    """``out`` if it can receive a result shaped like ``like`` (same shape and dtype,
    C-contiguous, and not one of ``inputs``), else None."""
    if out is None or out.shape != like.shape or out.dtype != like.dtype or not out.flags.c_contiguous:
        return None
    return None if any(out is a for a in inputs) else out
