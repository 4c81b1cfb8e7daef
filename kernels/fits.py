"""The least-squares fits of finite-sample tasks (``fastlora.tasks.least_squares_fits``, docs/design.md §2).

Ŵ_t = C_t Σ_t⁻¹ from Σ_t's Cholesky factor where the factor proves Σ_t⁺ = Σ_t⁻¹
(:func:`cholesky_factor`; :func:`cholesky_factors` for stacks, which the whitened fits read), and
floor_t = L_t(Ŵ_t) in extended precision (:func:`fit_floor`).
Written once, as loops over tasks calling primitives: here in their numpy forms (the
reference); :mod:`fastlora.kernels.fits_numba` gives the Numba forms of :func:`cholesky_inverse`
and :func:`fit_floor` and the loops compiled with them — what the tasks' fits run.  The engine's A
step uses :func:`cholesky_inverse` too; :func:`cholesky_factors` runs as numpy only.
"""
from __future__ import annotations

import numpy as np


def cholesky_factors(M, rtol):
    """(L, L⁻¹, proven) of a stack of symmetric matrices M (N, d, d) (lower triangles read): L_i lower
    triangular with M_i = L_i L_iᵀ and its inverse, where L_i proves that a pseudo-inverse keeps every
    eigenvalue — λ_min ≥ 1/‖L_i⁻¹‖²_F > rtol·tr M_i ≥ rtol·λ_max — so that M_i⁺ = M_i⁻¹; ``proven[i]``
    says which (the others' entries unspecified: M_i is not positive definite, or not provably above the
    cut, and a caller takes the spectral pseudo-inverse).  Batched numpy (LAPACK per matrix, no compiling):
    what the whitened fits read (fastlora.tasks.whitening_pairs); :func:`cholesky_factor` is one matrix."""
    count = M.shape[0]
    L = np.zeros(M.shape, M.dtype)  # in M's precision, as LAPACK factors it
    proven = np.ones(count, bool)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        try:
            L[...] = np.linalg.cholesky(M)
        except np.linalg.LinAlgError:  # some are not positive definite: find them one by one
            for i in range(count):
                try:
                    L[i] = np.linalg.cholesky(M[i])
                except np.linalg.LinAlgError:
                    proven[i] = False
                    L[i] = np.eye(M.shape[1])  # a placeholder, so that the stack inverts
        L_inv = np.linalg.inv(L)
        bound = 1.0 / np.sum((L_inv * L_inv).reshape(count, -1), axis=1)
        trace = np.trace(M, axis1=1, axis2=2)
        proven &= np.isfinite(bound) & np.isfinite(trace) & (bound > rtol * trace)
    return L, L_inv, proven


def cholesky_factor(M, rtol, L, L_inv):
    """:func:`cholesky_factors` of one matrix M (d, d), into the given arrays L and L_inv; returns whether
    L proves M⁺ = M⁻¹ (False: the arrays unspecified)."""
    factor, inverse, proven = cholesky_factors(M[None], rtol)
    if not proven[0]:
        return False
    L[...] = factor[0]
    L_inv[...] = inverse[0]
    return True


def cholesky_inverse(M, rtol, out):
    """out = M⁻¹ = L⁻ᵀ L⁻¹ where :func:`cholesky_factor` proves M⁺ = M⁻¹; returns whether it did
    (False: ``out`` unspecified)."""
    L, L_inv = np.empty(M.shape, M.dtype), np.empty(M.shape, M.dtype)
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


def fit_floors(W_hat, Sigma, C, s, floor):
    """floor_i = L_i(Ŵ_i) ≥ 0 of every task in extended precision (:func:`fit_floor`)."""
    for i in range(W_hat.shape[0]):
        floor[i] = max(fit_floor(W_hat[i], Sigma[i], C[i], s[i]), 0.0)
