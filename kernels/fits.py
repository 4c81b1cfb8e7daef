"""The least-squares fits of finite-sample tasks (``fastlora.tasks.least_squares_fits``, docs/design.md §2).

Ŵ_t = C_t Σ_t⁻¹ from Σ_t's Cholesky factor where the factor proves Σ_t⁺ = Σ_t⁻¹
(:func:`cholesky_factor`), the same factor as a whitening pair (:func:`cholesky_whiteners`), and
floor_t = L_t(Ŵ_t) in extended precision (:func:`fit_floor`).
Written once, as loops over tasks calling primitives: here in their numpy forms (the
reference); :mod:`fastlora.kernels.fits_numba` gives the primitives' Numba forms and the loops
compiled with them — what the tasks' fits run.  The engine's A step uses :func:`cholesky_inverse` too.
"""
from __future__ import annotations

import numpy as np


def cholesky_factor(M, rtol, L, L_inv):
    """L (lower triangular, M = L Lᵀ) and L_inv = L⁻¹ into the given (d, d) arrays, for M symmetric
    (its lower triangle is read), where L proves that a pseudo-inverse keeps every eigenvalue —
    λ_min ≥ 1/‖L⁻¹‖²_F > rtol·tr M ≥ rtol·λ_max — so that M⁺ = M⁻¹.  Returns whether it did; False
    (the arrays unspecified): M is not positive definite, or not provably above the cut (then a caller
    takes the spectral pseudo-inverse)."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        try:
            factor = np.linalg.cholesky(M)
        except np.linalg.LinAlgError:
            return False
        inverse = np.linalg.inv(factor)
        bound = 1.0 / np.sum(inverse * inverse)
        trace = np.trace(M)
        if not (np.isfinite(bound) and np.isfinite(trace) and bound > rtol * trace):
            return False
    L[...] = factor
    L_inv[...] = inverse
    return True


def cholesky_inverse(M, rtol, out):
    """out = M⁻¹ = L⁻ᵀ L⁻¹ where :func:`cholesky_factor` proves M⁺ = M⁻¹; returns whether it did
    (False: ``out`` unspecified)."""
    d = M.shape[0]
    L, L_inv = np.empty((d, d)), np.empty((d, d))
    if not cholesky_factor(M, rtol, L, L_inv):
        return False
    np.matmul(L_inv.T, L_inv, out=out)
    return True


def fit_floor(W, Sigma, C, s):
    """½⟨WΣ, W⟩ − ⟨W, C⟩ + s — a task's loss at W from its statistics, a difference of terms of the
    size of s — evaluated in extended precision: here ``np.longdouble`` (as float64 where the platform
    has no wider type); compiled, in double-double arithmetic (error-free products and sums, Ogita,
    Rump & Oishi 2005): correctly rounded unless the value falls to ~eps·s or below, then within a
    few units in the last place (its error ~eps²·s)."""
    ext = np.longdouble
    W, Sigma = W.astype(ext), Sigma.astype(ext)
    return float(0.5 * np.sum((W @ Sigma) * W) - np.sum(W * C.astype(ext)) + ext(s))


def cholesky_fits(Sigma, C, rtol, W_hat, proven):
    """Ŵ_i = C_i Σ_i⁻¹ into ``W_hat[i]`` for every task i whose Cholesky factor proves Σ_i⁺ = Σ_i⁻¹
    (:func:`cholesky_inverse` with cut ``rtol``); ``proven[i]`` says which."""
    d = Sigma.shape[1]
    inverse = np.empty((d, d), Sigma.dtype)
    for i in range(Sigma.shape[0]):
        proven[i] = cholesky_inverse(Sigma[i], rtol, inverse)
        if proven[i]:
            np.dot(C[i], inverse, W_hat[i])


def cholesky_whiteners(Sigma, rtol, root, inverse_root, proven):
    """A whitening pair of every task i whose Cholesky factor proves Σ_i⁺ = Σ_i⁻¹ (:func:`cholesky_factor`
    with cut ``rtol``): ``root[i]`` = L_iᵀ (so rootᵀ·root = Σ_i) and ``inverse_root[i]`` = L_i⁻ᵀ, its
    inverse; ``proven[i]`` says which (the others' entries unset).  What the whitened exact fits read
    (fastlora.engine.steps.fit_adapters): ‖R L‖_F = ‖R Σ^{1/2}‖_F, as L = Σ^{1/2}Q with Q orthogonal."""
    d = Sigma.shape[1]
    L, L_inv = np.empty((d, d)), np.empty((d, d))
    for i in range(Sigma.shape[0]):
        proven[i] = cholesky_factor(Sigma[i], rtol, L, L_inv)
        if proven[i]:
            root[i] = L.T
            inverse_root[i] = L_inv.T


def fit_floors(W_hat, Sigma, C, s, floor):
    """floor_i = L_i(Ŵ_i) ≥ 0 of every task in extended precision (:func:`fit_floor`)."""
    for i in range(W_hat.shape[0]):
        floor[i] = max(fit_floor(W_hat[i], Sigma[i], C[i], s[i]), 0.0)
