"""Numba versions of :mod:`fastlora.engine.linalg`, registered as overloads: compiled engine
code calling ``linalg.matmul`` runs these loops.  Imported by fastlora.engine.compiled only."""
from __future__ import annotations

import math

import numpy as np
from numba.extending import overload

from . import linalg

_FAST = {"fastmath": {"contract"}}
# reductions (dot products) vectorised: their rounding then differs from a sequential sum, as BLAS's
# does; every parity tolerance allows for it
_REDUCE = {"fastmath": {"contract", "reassoc"}}


@overload(linalg.matmul, jit_options=_FAST)
def _matmul(a, b, out):
    def impl(a, b, out):
        n, k = a.shape
        m = b.shape[1]
        for i in range(n):
            for j in range(m):
                out[i, j] = 0.0
            for p in range(k):
                x = a[i, p]
                for j in range(m):
                    out[i, j] += x * b[p, j]
    return impl


@overload(linalg.matmul_bt, jit_options=_REDUCE)
def _matmul_bt(a, b, out):
    def impl(a, b, out):
        n, k = a.shape
        m = b.shape[0]
        for i in range(n):
            for j in range(m):
                s = 0.0
                for p in range(k):
                    s += a[i, p] * b[j, p]
                out[i, j] = s
    return impl


@overload(linalg.matmul_add, jit_options=_FAST)
def _matmul_add(a, b, out, alpha):
    def impl(a, b, out, alpha):
        n, k = a.shape
        m = b.shape[1]
        for i in range(n):
            for p in range(k):
                x = alpha * a[i, p]
                for j in range(m):
                    out[i, j] += x * b[p, j]
    return impl


@overload(linalg.matmul_tn_add, jit_options=_FAST)
def _matmul_tn_add(a, b, out, alpha):
    def impl(a, b, out, alpha):
        r, n = a.shape
        m = b.shape[1]
        for p in range(r):
            for i in range(n):
                x = alpha * a[p, i]
                for j in range(m):
                    out[i, j] += x * b[p, j]
    return impl


def _by_ndim(x, one, two, three):
    return {1: one, 2: two, 3: three}[x.ndim]


@overload(linalg.inner, jit_options=_FAST)
def _inner(a, b):
    def impl1(a, b):
        s = 0.0
        for i in range(a.shape[0]):
            s += a[i] * b[i]
        return s

    def impl2(a, b):
        s = 0.0
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                s += a[i, j] * b[i, j]
        return s
    return _by_ndim(a, impl1, impl2, None)


@overload(linalg.norm, jit_options=_FAST)
def _norm(x):
    def impl1(x):
        squares = 0.0
        for i in range(x.shape[0]):
            squares += x[i] * x[i]
        if 1e-280 < squares < 1e280:  # linalg.SQUARES_SAFE
            return np.sqrt(squares)
        largest = 0.0
        for i in range(x.shape[0]):
            a = abs(x[i])
            if a > largest:
                largest = a
            elif not a <= largest:  # NaN
                return a
        if not (largest > 0 and np.isfinite(largest)):
            return largest
        total = 0.0
        for i in range(x.shape[0]):
            v = x[i] / largest
            total += v * v
        return largest * np.sqrt(total)

    def impl2(x):
        return linalg.norm(x.ravel())  # the 1-d form; a view where x is C-ordered (the engine's arrays)
    return _by_ndim(x, impl1, impl2, None)


@overload(linalg.axpy, jit_options=_FAST, inline="always")
def _axpy(alpha, x, y):
    def impl1(alpha, x, y):
        for i in range(x.shape[0]):
            y[i] += alpha * x[i]

    def impl2(alpha, x, y):
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                y[i, j] += alpha * x[i, j]

    def impl3(alpha, x, y):
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                for k in range(x.shape[2]):
                    y[i, j, k] += alpha * x[i, j, k]
    return _by_ndim(x, impl1, impl2, impl3)


@overload(linalg.copy, inline="always")
def _copy(src, dst):
    def impl1(src, dst):
        for i in range(src.shape[0]):
            dst[i] = src[i]

    def impl2(src, dst):
        for i in range(src.shape[0]):
            for j in range(src.shape[1]):
                dst[i, j] = src[i, j]

    def impl3(src, dst):
        for i in range(src.shape[0]):
            for j in range(src.shape[1]):
                for k in range(src.shape[2]):
                    dst[i, j, k] = src[i, j, k]
    return _by_ndim(src, impl1, impl2, impl3)


@overload(linalg.scale, inline="always")
def _scale(alpha, x):
    def impl1(alpha, x):
        for i in range(x.shape[0]):
            x[i] *= alpha

    def impl2(alpha, x):
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                x[i, j] *= alpha

    def impl3(alpha, x):
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                for k in range(x.shape[2]):
                    x[i, j, k] *= alpha
    return _by_ndim(x, impl1, impl2, impl3)


@overload(linalg.fill, inline="always")
def _fill(x, value):
    def impl1(x, value):
        for i in range(x.shape[0]):
            x[i] = value

    def impl2(x, value):
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                x[i, j] = value

    def impl3(x, value):
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                for k in range(x.shape[2]):
                    x[i, j, k] = value
    return _by_ndim(x, impl1, impl2, impl3)


@overload(linalg.adam_moments, jit_options=_FAST)
def _adam_moments(grad, m, v, b1, b2):
    def impl(grad, m, v, b1, b2):
        g, mm, vv = grad.reshape(-1), m.reshape(-1), v.reshape(-1)
        for i in range(g.shape[0]):
            mm[i] = b1 * mm[i] + (1.0 - b1) * g[i]
            vv[i] = b2 * vv[i] + (1.0 - b2) * g[i] * g[i]
    return impl


@overload(linalg.adam_apply, jit_options=_FAST)
def _adam_apply(x, m, v, lr1, c2, eps):
    def impl(x, m, v, lr1, c2, eps):
        xx, mm, vv = x.reshape(-1), m.reshape(-1), v.reshape(-1)
        for i in range(xx.shape[0]):
            xx[i] -= lr1 * mm[i] / (np.sqrt(c2 * vv[i]) + eps)
    return impl


@overload(linalg.task_residual, jit_options=_REDUCE)
def _task_residual(A, delta, W_hat, Sigma, E, G, identity):
    def impl(A, delta, W_hat, Sigma, E, G, identity):
        n, m = A.shape
        total = 0.0
        for i in range(n):
            for j in range(m):
                E[i, j] = A[i, j] + delta[i, j] - W_hat[i, j]
        for i in range(n):
            for j in range(m):
                if identity:
                    g = E[i, j]
                else:  # (E Σ)_ij = E_i · Σ_j (Σ symmetric)
                    g = 0.0
                    for p in range(m):
                        g += E[i, p] * Sigma[j, p]
                G[i, j] = g
                total += g * E[i, j]
        return 0.5 * total
    return impl


# symmetric matrices up to this size are diagonalised by Jacobi rotations in compiled code: the ALS's
# adapter step takes one per task and iteration, and a small eigh through LAPACK is mostly the call
# (measured, random symmetric: n=3 0.42 µs against 1.30, n=6 3.16 against 3.59; LAPACK wins from n=8)
JACOBI_MAX_DIM = 6
JACOBI_MAX_SWEEPS = 50


@overload(linalg.symmetric_eigen)
def _symmetric_eigen(H):
    def impl(H):
        n = H.shape[0]
        if n > JACOBI_MAX_DIM:
            return np.linalg.eigh(H)
        largest = 0.0
        for i in range(n):
            for j in range(n):
                if not np.isfinite(H[i, j]):  # LAPACK's verdict (numpy's: an error)
                    return np.linalg.eigh(H)
                largest = max(largest, abs(H[i, j]))
        # rotations on H / 2^e, the largest entry in [1, 2): no square over- or underflows at any scale
        unit = math.ldexp(1.0, math.frexp(largest)[1] - 1) if largest > 0.0 else 1.0
        A = np.empty((n, n), H.dtype)
        V = np.zeros((n, n), H.dtype)
        scale_sq = 0.0
        for i in range(n):
            V[i, i] = 1.0
            for j in range(n):
                A[i, j] = H[i, j] / unit
                scale_sq += A[i, j] * A[i, j]
        eps = np.finfo(H.dtype).eps
        tol_sq = eps * eps * scale_sq
        for _ in range(JACOBI_MAX_SWEEPS):
            off_sq = 0.0
            for p in range(n - 1):
                for q in range(p + 1, n):
                    off_sq += A[p, q] * A[p, q]
            if not off_sq > tol_sq:  # converged (or H has non-finite entries: no rotation makes sense)
                break
            for p in range(n - 1):
                for q in range(p + 1, n):
                    apq = A[p, q]
                    # negligible against its diagonal pair (Demmel–Veselić): dropped, not rotated — with equal
                    # diagonal entries a 45° rotation would only reshuffle the larger off-diagonal ones
                    if abs(apq) <= eps * np.sqrt(abs(A[p, p] * A[q, q])):
                        A[p, q] = 0.0
                        A[q, p] = 0.0
                        continue
                    theta = (A[q, q] - A[p, p]) / (2.0 * apq)
                    if abs(theta) > 1e8:  # t = 1/(2θ) to rounding (relative 1/(4θ²)); θ² could overflow
                        t = 0.5 / theta
                    else:
                        t = (1.0 if theta >= 0.0 else -1.0) / (abs(theta) + np.sqrt(theta * theta + 1.0))
                    c = 1.0 / np.sqrt(t * t + 1.0)
                    s = t * c
                    for k in range(n):  # A J
                        akp, akq = A[k, p], A[k, q]
                        A[k, p] = c * akp - s * akq
                        A[k, q] = s * akp + c * akq
                    for k in range(n):  # Jᵀ (A J)
                        apk, aqk = A[p, k], A[q, k]
                        A[p, k] = c * apk - s * aqk
                        A[q, k] = s * apk + c * aqk
                    A[p, q] = 0.0
                    A[q, p] = 0.0
                    for k in range(n):  # V J
                        vkp, vkq = V[k, p], V[k, q]
                        V[k, p] = c * vkp - s * vkq
                        V[k, q] = s * vkp + c * vkq
        lam = np.empty(n, H.dtype)
        for i in range(n):
            lam[i] = A[i, i] * unit
        for i in range(n):  # ascending, as eigh
            smallest = i
            for j in range(i + 1, n):
                if lam[j] < lam[smallest]:
                    smallest = j
            if smallest != i:
                lam[i], lam[smallest] = lam[smallest], lam[i]
                for k in range(n):
                    V[k, i], V[k, smallest] = V[k, smallest], V[k, i]
        return lam, V
    return impl
