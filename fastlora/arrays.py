"""Array-module helpers (``array_module``, Frobenius norms): the kernel contract's, re-exported; and
:func:`residual_spreads`, the scale of what a problem's adapters fit."""
from __future__ import annotations

import numpy as np

from .kernels.arrays import array_module, batched_frobenius_sq, frobenius_sq, reusable

__all__ = ["array_module", "batched_frobenius_sq", "frobenius_sq", "residual_spreads", "reusable"]


def residual_spreads(W_hat, A=None) -> np.ndarray:
    """√(mean_t ‖Ŵ_t − A‖²_F) of each problem of a stack Ŵ (P, T, d_out, d_in): against its A
    (P, d_out, d_in), or (A None) against the mean of its Ŵ_t — the tasks' differences.  Entries are
    scaled by their largest first (no under- or overflow of the squares)."""
    W_hat = np.asarray(W_hat, dtype=np.float64)
    ref = W_hat.mean(axis=1, keepdims=True) if A is None else np.asarray(A, dtype=np.float64)[:, None]
    dev = (W_hat - ref).reshape(W_hat.shape[0], -1)
    if dev.shape[1] == 0:
        return np.zeros(W_hat.shape[0])
    with np.errstate(invalid="ignore", over="ignore"):
        top = np.max(np.abs(dev), axis=1)
        unit = dev / np.where(top > 0, top, 1.0)[:, None]
        return top * np.sqrt(np.sum(unit * unit, axis=1) / W_hat.shape[1])
