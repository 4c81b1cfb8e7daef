"""Array-module helpers of the kernel contract: code written against ``xp`` runs on numpy (CI) and
cupy (GPU).  Part of ``fastlora.kernels`` so that kernels depend on nothing else of fastlora;
re-exported as ``fastlora.arrays``."""
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


def frobenius_sq(X) -> float:
    """‖X‖²_F as a Python float (any shape; the sum of squares of every entry)."""
    xp = array_module(X)
    if X.dtype == xp.float64 and X.flags.c_contiguous:
        return float(xp.vdot(X, X))  # one BLAS pass, no temporary
    return float(xp.sum(xp.square(X), dtype=xp.float64))


def batched_frobenius_sq(X):
    """Per-task ‖X_t‖²_F of a (T, ...) batch, shape (T,)."""
    xp = array_module(X)
    flat = X.reshape(X.shape[0], -1)
    return xp.sum(flat * flat, axis=1)


def reusable(out, like, *inputs):
    """``out`` if it can receive a result shaped like ``like`` (same shape and dtype,
    C-contiguous, and not one of ``inputs``), else None."""
    if out is None or out.shape != like.shape or out.dtype != like.dtype or not out.flags.c_contiguous:
        return None
    return None if any(out is a for a in inputs) else out
