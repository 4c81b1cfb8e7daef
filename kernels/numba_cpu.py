"""Numba CPU kernels: drop-in replacements for ``reference`` (parallel over tasks).

Every kernel cites the reference function it must agree with; tests/test_parity.py checks
them to 1e-10 (float64) / 1e-4 (float32).  Big products with the shared dense matrix stay
single BLAS calls (GEMM / SYRK, multi-threaded by BLAS); the per-task small work — low-rank
corrections, orthonormalisation, Rayleigh–Ritz — is fused here and spread over tasks with
``prange``, without calling BLAS inside the parallel loops (no nested thread pools).

Compiled code is cached on disk in ``fastlora.config.settings.numba_cache_dir`` (or
``NUMBA_CACHE_DIR`` when set); nothing compiles at import, only on first call.
"""
from __future__ import annotations

import os

import numba
import numpy as np
from numba import prange
from scipy.linalg import blas

from fastlora.config import settings


def kernel(parallel: bool = False):
    """``numba.njit`` with fastlora's cache directory, fastmath flag and error model."""
    def wrap(fn):
        previous = numba.config.CACHE_DIR
        if not os.environ.get("NUMBA_CACHE_DIR"):
            # the cache locator is bound when the function is decorated: point it at our
            # directory for our kernels only, leaving Numba's global setting as it was
            numba.config.CACHE_DIR = str(settings.numba_cache_dir)
        try:
            return numba.njit(cache=True, parallel=parallel, fastmath=settings.fastmath, error_model="numpy")(fn)
        finally:
            numba.config.CACHE_DIR = previous
    return wrap


# ----------------------------------------------------------------------------------------
@kernel(parallel=True)
def _add_lowrank_rows(out, X, L, R):
    """out[t] += (X[t] @ L[t]ᵀ) @ R[t]  — the low-rank part of reference.apply_shared_lowrank."""
    T, r, n = X.shape
    k, m = R.shape[1], R.shape[2]
    for t in prange(T):
        coef = np.zeros((r, k), dtype=X.dtype)
        for i in range(r):
            for l in range(k):
                s = 0.0
                for j in range(n):
                    s += X[t, i, j] * L[t, l, j]
                coef[i, l] = s
        for i in range(r):
            for l in range(k):
                c = coef[i, l]
                for j in range(m):
                    out[t, i, j] += c * R[t, l, j]


def apply_shared_lowrank(X, shared_t, L, R):
    """Twin of reference.apply_shared_lowrank: one BLAS GEMM + a fused parallel correction."""
    T, r, n = X.shape
    X = np.ascontiguousarray(X)
    out = (X.reshape(T * r, n) @ shared_t).reshape(T, r, -1)
    _add_lowrank_rows(out, X, np.ascontiguousarray(L), np.ascontiguousarray(R))
    return out


# ----------------------------------------------------------------------------------------
@kernel(parallel=True)
def _mgs_rows(Y):
    """Orthonormal rows by modified Gram–Schmidt, twice (stable to rounding) — twin of
    reference.orthonormalize_rows up to the sign of each row.  A row that vanishes after
    orthogonalisation (rank-deficient input) is replaced by the first unit vector e_j that
    survives, so the output is always orthonormal."""
    T, r, n = Y.shape
    Q = np.empty_like(Y)
    eps = np.finfo(Y.dtype).eps
    for t in prange(T):
        for i in range(r):
            v = Y[t, i].copy()
            scale = np.sqrt(np.sum(v * v))
            for _ in range(2):
                for j in range(i):
                    v -= np.sum(v * Q[t, j]) * Q[t, j]
            norm = np.sqrt(np.sum(v * v))
            e = 0
            while norm <= 64 * eps * max(scale, 1e-300) and e < n:
                v[:] = 0.0
                v[e] = 1.0
                scale = 1.0
                for _ in range(2):
                    for j in range(i):
                        v -= np.sum(v * Q[t, j]) * Q[t, j]
                norm = np.sqrt(np.sum(v * v))
                e += 1
            Q[t, i] = v / norm
    return Q


def orthonormalize_rows(Y):
    return _mgs_rows(np.ascontiguousarray(Y))


# ----------------------------------------------------------------------------------------
@kernel(parallel=True)
def _ritz_psd(Q, Y):
    """Twin of reference.ritz_psd."""
    T, r, n = Q.shape
    U = np.zeros_like(Q)
    for t in prange(T):
        H = np.empty((r, r), dtype=Q.dtype)
        for i in range(r):
            for j in range(r):
                H[i, j] = np.sum(Q[t, i] * Y[t, j])
        H = 0.5 * (H + H.T)
        lam, W = np.linalg.eigh(H)
        for c in range(r):
            src = r - 1 - c  # descending
            if lam[src] > 0:
                root = np.sqrt(lam[src])
                for i in range(r):
                    U[t, c] += (W[i, src] * root) * Q[t, i]
    return U


def ritz_psd(Q, Y):
    return _ritz_psd(np.ascontiguousarray(Q), np.ascontiguousarray(Y))


@kernel(parallel=True)
def _ritz_general(P, Z):
    """Twin of reference.ritz_general."""
    T, r, m = P.shape
    n = Z.shape[2]
    B = np.zeros((T, r, m), dtype=P.dtype)
    C = np.empty((T, r, n), dtype=P.dtype)
    V = np.empty((T, r, n), dtype=P.dtype)
    for t in prange(T):
        W, S, Ht = np.linalg.svd(Z[t], full_matrices=False)
        for c in range(r):
            root = np.sqrt(S[c])
            for i in range(r):
                B[t, c] += (W[i, c] * root) * P[t, i]
            C[t, c] = root * Ht[c]
            V[t, c] = Ht[c]
    return B, C, V


def ritz_general(P, Z):
    return _ritz_general(np.ascontiguousarray(P), np.ascontiguousarray(Z))


# ----------------------------------------------------------------------------------------
def shared_plus_gram(M, B, C, alpha):
    """Twin of reference.shared_plus_gram: BLAS SYRK (half the flops of a GEMM) when B is C."""
    T, r, m = B.shape
    Bf = np.ascontiguousarray(B).reshape(T * r, m)
    if C is not B:
        return M + alpha * (Bf.T @ np.ascontiguousarray(C).reshape(T * r, -1))
    syrk = blas.dsyrk if Bf.dtype == np.float64 else blas.ssyrk
    # Bf.T is (m, T·r) in Fortran order: SYRK computes Bf.T @ Bf with no copy (upper triangle)
    G = syrk(alpha, Bf.T, beta=0.0, trans=0, lower=0)
    return M + _symmetrize_upper(G)


@kernel(parallel=True)
def _symmetrize_upper(G):
    n = G.shape[0]
    out = np.empty((n, n), dtype=G.dtype)
    for i in prange(n):
        for j in range(n):
            out[i, j] = G[i, j] if i <= j else G[j, i]
    return out


# ----------------------------------------------------------------------------------------
@kernel(parallel=True)
def _lowrank_diff_sq(B1, C1, B2, C2):
    """Twin of reference.lowrank_diff_sq (QR of [C1; C2]ᵀ per task)."""
    T, k1, m = B1.shape
    k2, n = B2.shape[1], C1.shape[2]
    out = np.empty(T, dtype=B1.dtype)
    for t in prange(T):
        stack = np.empty((n, k1 + k2), dtype=B1.dtype)
        for j in range(n):
            for l in range(k1):
                stack[j, l] = C1[t, l, j]
            for l in range(k2):
                stack[j, k1 + l] = C2[t, l, j]
        _, R = np.linalg.qr(stack)
        total = 0.0
        for i in range(R.shape[0]):
            for j in range(m):
                s = 0.0
                for l in range(k1):
                    s += R[i, l] * B1[t, l, j]
                for l in range(k2):
                    s -= R[i, k1 + l] * B2[t, l, j]
                total += s * s
        out[t] = total
    return out


def lowrank_diff_sq(B1, C1, B2, C2):
    c = np.ascontiguousarray
    return _lowrank_diff_sq(c(B1), c(C1), c(B2), c(C2))


@kernel(parallel=True)
def _shared_lowrank_sq_norms(D, P, Q):
    """Twin of reference.shared_lowrank_sq_norms: entries formed on the fly, no T·d² memory."""
    T, k, m = P.shape
    n = Q.shape[2]
    out = np.empty(T, dtype=D.dtype)
    for t in prange(T):
        total = 0.0
        for i in range(m):
            for j in range(n):
                s = D[i, j]
                for l in range(k):
                    s += P[t, l, i] * Q[t, l, j]
                total += s * s
        out[t] = total
    return out


def shared_lowrank_sq_norms(D, P, Q):
    c = np.ascontiguousarray
    return _shared_lowrank_sq_norms(c(D), c(P), c(Q))


KERNELS = {f.__name__: f for f in (apply_shared_lowrank, orthonormalize_rows, ritz_psd, ritz_general,
                                   shared_plus_gram, lowrank_diff_sq, shared_lowrank_sq_norms)}

COMPILED = (_add_lowrank_rows, _mgs_rows, _ritz_psd, _ritz_general, _symmetrize_upper, _lowrank_diff_sq,
            _shared_lowrank_sq_norms)
