"""Array-module helpers (``array_module``, Frobenius norms): the kernel contract's, re-exported; and
:func:`residual_spreads`, the scale of what a problem's adapters fit."""
from __future__ import annotations

import numpy as np

from .kernels.arrays import array_module, batched_frobenius_sq, frobenius_sq, reusable

__all__ = ["array_module", "batched_frobenius_sq", "frobenius_sq", "residual_spreads", "reusable"]


def residual_spreads(W_hat, Sigma=None, A=None):
    """Per problem, √(Σ_t ⟨(Ŵ_t − A)Σ_t, Ŵ_t − A⟩ / Σ_t tr(Σ_t)/d_in) — the scale of the residuals
    the adapters fit from A, measured where the data see them (Σ_t's null space, where Ŵ_t = C_tΣ_t⁺
    is arbitrary, counts for nothing) — of stacks Ŵ (P, T, d_out, d_in) and Σ (P, T, d_in, d_in)
    (None: population tasks, Σ_t = I), against A (P, d_out, d_in) or, None, the standard solution
    (the minimiser of Σ_t L_t(A): the mean target; (Σ_t Ŵ_tΣ_t)(Σ_t Σ_t)⁺ on samples, sums over t).  Generic
    over the array module; entries scaled by their largest first (no under- or overflow of squares)."""
    xp = array_module(W_hat)
    P, T = W_hat.shape[:2]
    if A is None:
        if Sigma is None:
            A = xp.mean(W_hat, axis=1)
        else:
            A = xp.sum(W_hat @ Sigma, axis=1) @ xp.linalg.pinv(xp.sum(Sigma, axis=1))
    dev = W_hat - A[:, None]
    flat = dev.reshape(P, -1)
    if flat.shape[1] == 0:
        return np.zeros(P)
    top = xp.max(xp.abs(flat), axis=1)
    unit = dev / xp.where(top > 0, top, 1.0)[:, None, None, None]
    weighted = unit if Sigma is None else unit @ Sigma
    curvature = float(T) if Sigma is None else xp.sum(xp.trace(Sigma, axis1=2, axis2=3), axis=1) / W_hat.shape[3]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        spread = top * xp.sqrt(xp.maximum(xp.sum((weighted * unit).reshape(P, -1), axis=1), 0.0) / curvature)
    return np.asarray(spread.get() if hasattr(spread, "get") else spread, dtype=np.float64)
