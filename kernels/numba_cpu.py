"""Numba CPU kernels: drop-in replacements for ``reference`` (parallel over tasks).

Every kernel cites the reference function it must agree with; tests/test_parity.py checks
them to 1e-10 (float64) / 1e-4 (float32).  Big products with the shared dense matrix stay
single calls of numpy's BLAS (GEMM / SYRK, multi-threaded by BLAS); the per-task small
work — low-rank corrections, orthonormalisation, Rayleigh–Ritz — and the O(d²) bookkeeping
are fused here and spread over tasks or tiles with ``prange``, without calling BLAS inside
the parallel loops (no nested thread pools).

Compiled code is cached on disk in the folder of ``fastlora.kernels.compile_options()`` (the numba
backend's: ``fastlora.config.settings.numba_cache_dir``; or
``NUMBA_CACHE_DIR`` when set); nothing compiles at import, only on first call.
"""
from __future__ import annotations

import os

import numba
import numpy as np
from numba import prange

import fastlora.kernels as contract
from fastlora.kernels import ResidualNorms, reference
from fastlora.kernels.arrays import reusable

# Reassociation lets LLVM vectorise the reductions (dot products) of the small per-task
# loops; it changes results only at rounding level, as BLAS does.  No nnan/ninf: NaN and
# Inf must propagate so that a diverging solve is reported, not hidden.
SAFE_FASTMATH = {"reassoc", "contract"}


def kernel(parallel: bool = False):
    """``numba.njit`` with fastlora's cache directory, fastmath flags and error model."""
    def wrap(fn):
        options = contract.compile_options()
        flags = True if options["fastmath"] else SAFE_FASTMATH
        folder = None if os.environ.get("NUMBA_CACHE_DIR") else options["cache_dir"]  # a user's setting wins
        return contract.njit_cached(fn, folder, parallel=parallel, fastmath=flags, error_model="numpy")
    return wrap


# Waking Numba's thread pool for a small kernel costs more than the kernel, and its threads
# then compete with BLAS's for the cores (measured: d=96..512, T≤64 run faster on one Numba
# thread).  Kernels touching fewer elements than this run on the calling thread only.
PARALLEL_MIN_ELEMENTS = 1 << 20
_configured_threads = [0]


def configure_threads(n: int) -> None:
    """The thread count for large kernels (set by the numba backend from ``threads=``)."""
    _configured_threads[0] = int(n)
    numba.set_num_threads(int(n))


def configured_threads() -> int:
    """The current large-kernel thread count (0: not configured yet)."""
    return _configured_threads[0]


def threads_for(elements: int) -> None:
    """Set Numba's thread count for a kernel touching ``elements`` values: one thread below
    PARALLEL_MIN_ELEMENTS, else the configured count (plugins' kernels call it too)."""
    wanted = 1 if elements < PARALLEL_MIN_ELEMENTS else (_configured_threads[0] or numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)


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
    threads_for(X.size * L.shape[1])
    _add_lowrank_rows(out, X, np.ascontiguousarray(L), np.ascontiguousarray(R))
    return out


# ----------------------------------------------------------------------------------------
@kernel()
def _dot(a, b):
    s = 0.0
    for j in range(a.shape[0]):
        s += a[j] * b[j]
    return s


@kernel()
def _orthogonalize_against(v, Q, count):
    """v -= Σ_j (v·q_j) q_j over the first ``count`` rows of Q, twice (stable to rounding)."""
    for _ in range(2):
        for j in range(count):
            c = _dot(v, Q[j])
            for i in range(v.shape[0]):
                v[i] -= c * Q[j, i]


@kernel()
def _normalize_row(v, Q, count, eps):
    """Orthogonalise v against the first ``count`` rows of Q and normalise it.  A row that
    vanishes (rank-deficient input) is replaced by the first unit vector e_j that survives,
    so the rows stay orthonormal."""
    n = v.shape[0]
    scale = np.sqrt(_dot(v, v))
    _orthogonalize_against(v, Q, count)
    norm = np.sqrt(_dot(v, v))
    e = 0
    while norm <= 64 * eps * max(scale, 1e-300) and e < n:
        v[:] = 0.0
        v[e] = 1.0
        scale = 1.0
        _orthogonalize_against(v, Q, count)
        norm = np.sqrt(_dot(v, v))
        e += 1
    for j in range(n):
        Q[count, j] = v[j] / norm


@kernel(parallel=True)
def _mgs_rows(Y):
    """Orthonormal rows by modified Gram–Schmidt with reorthogonalisation — twin of
    reference.orthonormalize_rows up to the sign of each row.  A row that vanishes after
    orthogonalisation (rank-deficient input) is replaced by the first unit vector e_j that
    survives, so the output is always orthonormal."""
    T, r, _ = Y.shape
    Q = np.empty_like(Y)
    eps = np.finfo(Y.dtype).eps
    for t in prange(T):
        for i in range(r):
            _normalize_row(Y[t, i].copy(), Q[t], i, eps)
    return Q


def orthonormalize_rows(Y):
    threads_for(Y.size * Y.shape[1])
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
                H[i, j] = _dot(Q[t, i], Y[t, j])
        for i in range(r):
            for j in range(i):
                H[i, j] = H[j, i] = 0.5 * (H[i, j] + H[j, i])
        lam, W = np.linalg.eigh(H)
        for c in range(r):
            src = r - 1 - c  # descending
            if lam[src] > 0:
                root = np.sqrt(lam[src])
                for i in range(r):
                    w = W[i, src] * root
                    for j in range(n):
                        U[t, c, j] += w * Q[t, i, j]
    return U


def ritz_psd(Q, Y):
    threads_for(Q.size * Q.shape[1])
    return _ritz_psd(np.ascontiguousarray(Q), np.ascontiguousarray(Y))


@kernel(parallel=True)
def _mgs_shifted_inplace(Y, Q, shift):
    """Y[t] ← orthonormal rows spanning Y[t] + shift·Q[t] (Gram–Schmidt, twice), in place:
    row i needs only input row i and output rows < i."""
    T, r, n = Y.shape
    eps = np.finfo(Y.dtype).eps
    for t in prange(T):
        v = np.empty(n, dtype=Y.dtype)
        for i in range(r):
            for j in range(n):
                v[j] = Y[t, i, j] + shift * Q[t, i, j]
            _normalize_row(v, Y[t], i, eps)


def psd_subspace_step(ops, Q, Y, shift):
    """Fused twin of reference.psd_subspace_step; the next basis is returned in the scratch Y
    (one (T, r, n) buffer less: 268 MB at d=4096, T=1024, r=8)."""
    c = np.ascontiguousarray
    Q, Y = c(Q), c(Y)
    threads_for(Q.size * Q.shape[1])
    U = _ritz_psd(Q, Y)
    _mgs_shifted_inplace(Y, Q, Q.dtype.type(shift))
    return U, Y


@kernel(parallel=True)
def _gram_inner(B1, C1, B2, C2, same):
    """Twin of reference.gram_inner; ``same``: C1 is B1 and C2 is B2 (one Gram, squared)."""
    T, k1, _ = B1.shape
    k2 = B2.shape[1]
    out = np.empty(T, dtype=B1.dtype)
    for t in prange(T):
        total = 0.0
        for i in range(k1):
            for j in range(k2):
                gb = _dot(B1[t, i], B2[t, j])
                gc = gb if same else _dot(C1[t, i], C2[t, j])
                total += gb * gc
        out[t] = total
    return out


def gram_inner(B1, C1, B2, C2):
    threads_for(B1.size * B2.shape[1])
    c = np.ascontiguousarray
    same = C1 is B1 and C2 is B2
    return _gram_inner(c(B1), c(C1), c(B2), c(C2), same)


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
                w = W[i, c] * root
                for j in range(m):
                    B[t, c, j] += w * P[t, i, j]
            for j in range(n):
                C[t, c, j] = root * Ht[c, j]
                V[t, c, j] = Ht[c, j]
    return B, C, V


def ritz_general(P, Z):
    threads_for(Z.size * Z.shape[1])
    return _ritz_general(np.ascontiguousarray(P), np.ascontiguousarray(Z))


# ----------------------------------------------------------------------------------------
@kernel(parallel=True)
def _lowrank_diff_sq(B1, C1, B2, C2):
    """Twin of reference.lowrank_diff_sq: R of [C1; C2]ᵀ by Gram–Schmidt with
    reorthogonalisation (R accumulates both passes), then ‖R [B1; −B2]‖²_F."""
    T, k1, m = B1.shape
    k2, n = B2.shape[1], C1.shape[2]
    k = k1 + k2
    out = np.empty(T, dtype=B1.dtype)
    for t in prange(T):
        Q = np.zeros((k, n), dtype=B1.dtype)
        R = np.zeros((k, k), dtype=B1.dtype)
        v = np.empty(n, dtype=B1.dtype)
        for i in range(k):
            for j in range(n):
                v[j] = C1[t, i, j] if i < k1 else C2[t, i - k1, j]
            for _ in range(2):
                for l in range(i):
                    c = _dot(v, Q[l])
                    R[l, i] += c
                    for j in range(n):
                        v[j] -= c * Q[l, j]
            norm = np.sqrt(_dot(v, v))
            R[i, i] = norm
            if norm > 0:
                for j in range(n):
                    Q[i, j] = v[j] / norm
        total = 0.0
        for i in range(k):
            for j in range(m):
                s = 0.0
                for l in range(i, k):
                    s += R[i, l] * (B1[t, l, j] if l < k1 else -B2[t, l - k1, j])
                total += s * s
        out[t] = total
    return out


def lowrank_diff_sq(B1, C1, B2, C2):
    threads_for((C1.size + C2.size) * (C1.shape[1] + C2.shape[1]))
    c = np.ascontiguousarray
    return _lowrank_diff_sq(c(B1), c(C1), c(B2), c(C2))


_TILE = 32  # 32×32 float64 tiles: the ~12 tiles a step touches stay in L2


def residual_stats(S, A_new, A_old, symmetrize):
    """Twin of reference.residual_stats: the tiled pass of ``_update_stats`` with α = 0 (A not stored)."""
    if S.shape[0] != S.shape[1]:  # rectangular weights: the reference's passes
        return reference.residual_stats(S, A_new, A_old, symmetrize)
    c = np.ascontiguousarray
    A_new = c(A_new)
    D = np.empty_like(S)
    threads_for(4 * S.size)
    zero = S.dtype.type(0.0)
    if symmetrize:
        norms = _update_stats(A_new, A_new, zero, c(S), c(A_old), A_new, D, False)
    else:
        norms = _update_rows(A_new, A_new, zero, c(S), c(A_old), A_new, D, False)
    return D, ResidualNorms(*(float(v) for v in norms))


@kernel()
def _update_block(M, G, alpha, S, A_old, A, store, R, i0, i1, j0, j1, sums):
    """Rows i0:i1, columns j0:j1: a = M + alpha·G (stored in A when ``store``), R = S − a (a tile
    buffer), and ‖a‖², ‖S − a‖², ‖a − A_old‖² added to sums[1:4] — contiguous inner loops."""
    a_sq = r_sq = s_sq = 0.0
    for i in range(i0, i1):
        for j in range(j0, j1):
            a = M[i, j] + alpha * G[i, j]
            if store:
                A[i, j] = a
            r = S[i, j] - a
            step = a - A_old[i, j]
            R[i - i0, j - j0] = r
            a_sq += a * a
            r_sq += r * r
            s_sq += step * step
    sums[1] += r_sq
    sums[2] += s_sq
    sums[3] += a_sq


@kernel(parallel=True)
def _update_rows(M, G, alpha, S, A_old, A, D, store):
    """The pass of _update_stats without symmetrisation: rows in parallel, contiguous loops."""
    n, m = S.shape
    acc = np.zeros((n, 4))
    for i in prange(n):
        d_sq = s_sq = a_sq = 0.0
        for j in range(m):
            a = M[i, j] + alpha * G[i, j]
            if store:
                A[i, j] = a
            r = S[i, j] - a
            step = a - A_old[i, j]
            D[i, j] = r
            d_sq += r * r
            s_sq += step * step
            a_sq += a * a
        acc[i, 0], acc[i, 1], acc[i, 2], acc[i, 3] = d_sq, d_sq, s_sq, a_sq
    return acc.sum(axis=0)


@kernel(parallel=True)
def _update_stats(M, G, alpha, S, A_old, A, D, store):
    """A = M + alpha·G (stored in A when ``store``) and the symmetrised residual statistics of
    reference.residual_stats (unsymmetrised: _update_rows), in one pass over memory: every tile
    pair (I, J), (J, I) of the upper triangle is one unit of parallel work (even load), its
    residual tiles kept in L1 for the symmetrisation.  A may be G (in place)."""
    n = S.shape[0]
    tiles = (n + _TILE - 1) // _TILE
    count = tiles * (tiles + 1) // 2
    rows = np.empty(count, dtype=np.int64)  # the tile pairs of the upper triangle
    cols = np.empty(count, dtype=np.int64)
    index = 0
    for bi in range(tiles):
        for bj in range(bi, tiles):
            rows[index], cols[index] = bi, bj
            index += 1
    acc = np.zeros((count, 4))
    for pair in prange(count):
        bi, bj = rows[pair], cols[pair]
        i0, i1 = bi * _TILE, min(n, (bi + 1) * _TILE)
        j0, j1 = bj * _TILE, min(n, (bj + 1) * _TILE)
        sums = acc[pair]
        Rij = np.empty((_TILE, _TILE), dtype=S.dtype)
        Rji = np.empty((_TILE, _TILE), dtype=S.dtype)
        _update_block(M, G, alpha, S, A_old, A, store, Rij, i0, i1, j0, j1, sums)
        if bi != bj:
            _update_block(M, G, alpha, S, A_old, A, store, Rji, j0, j1, i0, i1, sums)
        d_sq = 0.0
        for i in range(i0, i1):
            for j in range(j0, j1):
                if bi == bj:
                    r = 0.5 * (Rij[i - i0, j - j0] + Rij[j - j0, i - i0])
                    D[i, j] = r
                    d_sq += r * r
                else:
                    r = 0.5 * (Rij[i - i0, j - j0] + Rji[j - j0, i - i0])
                    D[i, j] = D[j, i] = r
                    d_sq += 2.0 * (r * r)
        sums[0] += d_sq
    return acc.sum(axis=0)


def shared_update_stats(ops, M, B, C, alpha, S, A_old, symmetrize, out=None, gram=None):
    """Fused twin of reference.shared_update_stats (A is returned in ``gram``'s memory when given).

    The Gram Σ_t B_tᵀC_t is one call of *numpy's* BLAS (``Bfᵀ @ Bf`` is a SYRK there):
    SciPy ships a second OpenBLAS with its own thread pool, and alternating the two pools
    makes each spin while the other works (measured 2x slower iterations).
    """
    if M.shape[0] != M.shape[1]:
        return reference.shared_update_stats(ops, M, B, C, alpha, S, A_old, symmetrize, gram=gram)
    G = reference.gram_sum(B, C) if gram is None else np.ascontiguousarray(gram)
    c = np.ascontiguousarray
    D = reusable(out, G, A_old, S, M)
    D = np.empty_like(G) if D is None else D
    threads_for(6 * G.size)
    if symmetrize:
        norms = _update_stats(c(M), G, G.dtype.type(alpha), c(S), c(A_old), G, D, True)
    else:
        norms = _update_rows(c(M), G, G.dtype.type(alpha), c(S), c(A_old), G, D, True)
    return G, D, ResidualNorms(*(float(v) for v in norms))


KERNELS = {f.__name__: f for f in (apply_shared_lowrank, orthonormalize_rows, ritz_psd, ritz_general,
                                   lowrank_diff_sq, residual_stats, shared_update_stats, psd_subspace_step,
                                   gram_inner)}


def warm_up(dtype) -> None:
    """Load every compiled kernel for ``dtype`` (compiling on a cold cache) on tiny inputs, so
    a solve's timing never includes it.  One type signature per kernel and dtype."""
    rng = np.random.default_rng(0)
    T, r, n = 2, 2, 4

    def a(*shape):
        return rng.standard_normal(shape).astype(dtype)

    one = dtype(1.0)
    _add_lowrank_rows(a(T, r, n), a(T, r, n), a(T, r, n), a(T, r, n))
    Q = _mgs_rows(a(T, r, n))
    _ritz_psd(Q, a(T, r, n))
    _mgs_shifted_inplace(a(T, r, n), Q, one)
    _gram_inner(a(T, r, n), a(T, r, n), a(T, r, n), a(T, r, n), False)
    _ritz_general(Q, a(T, r, n))
    _lowrank_diff_sq(a(T, r, n), a(T, r, n), a(T, r, n), a(T, r, n))
    _update_stats(a(n, n), a(n, n), one, a(n, n), a(n, n), a(n, n), a(n, n), True)
    _update_rows(a(n, n), a(n, n), one, a(n, n), a(n, n), a(n, n), a(n, n), True)
