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


def rows_view(X):
    """The (T, m, n) rows form of a batch of (T, n, m) matrices, a view where possible."""
    return X.swapaxes(-1, -2)


def flat_rows(X):
    """Rows of all tasks stacked: (T, n, m) matrices -> (T·m, n); free when rows are contiguous."""
    xp = array_module(X)
    R = rows_view(X)
    return xp.ascontiguousarray(R).reshape(-1, R.shape[-1])


def from_rows(rows, T: int):
    """Inverse of :func:`flat_rows`: (T·m, n) -> (T, n, m) as a view of contiguous rows."""
    return rows.reshape(T, -1, rows.shape[-1]).swapaxes(-1, -2)


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
