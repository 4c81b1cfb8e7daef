"""Numba twin of ``shallow_reference.shallow_loss_grad`` (forward, sigmoid and backward fused).

One pass per (task, block of rows): the block's pre-activations, sigmoids, outputs and
residuals live in per-block scratch (h × rows, in cache), and its contributions to L_t,
∂L_t/∂c_t and G_t = ∂L_t/∂W_t are accumulated at once; no (T, n, h) array is formed.  Inputs
are read transposed, (T, d, n), so every inner loop runs over contiguous rows.  Work units are
(task, row block) pairs spread with ``prange``, so a few tasks with many rows still fill the
cores; the number of blocks depends only on (T, n), never on the thread count, and every
reduction runs in a fixed order (:func:`_dot`), so results are bitwise the same for any
thread count and memory alignment.  Padded rows (``i ≥ n_rows[t]``) are skipped.
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from fastlora.kernels.numba_cpu import kernel, threads_for

_MIN_BLOCK_ROWS = 256   # rows below which a block's partial sums cost more than they save
_TARGET_UNITS = 64      # (task, block) work units wanted when T is small


def blocks_per_task(T: int, n: int) -> int:
    """Row blocks per task: 1 when T alone gives enough work units, else up to ⌈n/256⌉."""
    return max(1, min(math.ceil(n / _MIN_BLOCK_ROWS), math.ceil(_TARGET_UNITS / T)))


@kernel()
def _dot(a, b):
    """Σ_i a[i]·b[i] in a fixed order: eight interleaved partial sums, then a fixed tree.

    Written out so that the sum never depends on how LLVM vectorises (with ``reassoc`` a
    compiled reduction's order can depend on the arrays' memory alignment, which made
    results differ between runs by an ulp — and L-BFGS amplifies an ulp into a different
    path); the eight independent sums still fill a SIMD register.
    """
    n = a.shape[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    full = n - n % 8
    for i in range(0, full, 8):
        s0 += a[i] * b[i]
        s1 += a[i + 1] * b[i + 1]
        s2 += a[i + 2] * b[i + 2]
        s3 += a[i + 3] * b[i + 3]
        s4 += a[i + 4] * b[i + 4]
        s5 += a[i + 5] * b[i + 5]
        s6 += a[i + 6] * b[i + 6]
        s7 += a[i + 7] * b[i + 7]
    tail = 0.0
    for i in range(full, n):
        tail += a[i] * b[i]
    return (((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))) + tail


@kernel(parallel=True)
def _loss_grad_blocks(XT, y, n_rows, W, c, nb, losses, G, gc):
    """XT (T, d, n): the inputs transposed, so every inner loop runs over contiguous rows."""
    T, d, n = XT.shape
    h = W.shape[1]
    block = (n + nb - 1) // nb
    units = T * nb
    loss_part = np.zeros(units, dtype=XT.dtype)
    G_part = np.zeros((units, h, d), dtype=XT.dtype)
    gc_part = np.zeros((units, h), dtype=XT.dtype)
    for u in prange(units):
        t = u // nb
        start = (u % nb) * block
        rows = max(0, min(start + block, n_rows[t]) - start)
        inv_n = 1.0 / max(n_rows[t], 1)
        S = np.empty((h, rows), dtype=XT.dtype)       # pre-activations, then hidden units
        slope = np.empty((h, rows), dtype=XT.dtype)
        out = np.zeros(rows, dtype=XT.dtype)
        for j in range(h):
            z = S[j]
            z[:] = 0.0
            for m in range(d):
                w = W[t, j, m]
                x = XT[t, m, start:start + rows]
                for i in range(rows):
                    z[i] += w * x[i]
            cj = c[t, j]
            for i in range(rows):
                e = math.exp(-abs(z[i]))        # stable sigmoid: no overflow for any z
                inv = 1.0 / (1.0 + e)
                slope[j, i] = e * inv * inv
                z[i] = inv if z[i] >= 0 else e * inv
                out[i] += cj * z[i]
        residual = out
        for i in range(rows):
            residual[i] = out[i] - y[t, start + i]
        loss_part[u] = 0.5 * inv_n * _dot(residual, residual)
        for i in range(rows):
            residual[i] *= inv_n                 # weighted residual r_i / n_t from here on
        dz = np.empty(rows, dtype=XT.dtype)
        for j in range(h):
            cj = c[t, j]
            gc_part[u, j] = _dot(residual, S[j])
            for i in range(rows):
                dz[i] = residual[i] * cj * slope[j, i]
            for m in range(d):
                G_part[u, j, m] = _dot(dz, XT[t, m, start:start + rows])
    for t in prange(T):
        losses[t] = 0.0
        G[t] = 0.0
        gc[t] = 0.0
        for b in range(nb):
            u = t * nb + b
            losses[t] += loss_part[u]
            for j in range(h):
                gc[t, j] += gc_part[u, j]
                for m in range(d):
                    G[t, j, m] += G_part[u, j, m]


def shallow_loss_grad(X, y, n_rows, W, c):
    """Twin of ``shallow_reference.shallow_loss_grad`` (same arguments and returns)."""
    T, n, d = X.shape
    h = W.shape[1]
    XT = np.ascontiguousarray(X.transpose(0, 2, 1))
    y, W, c = (np.ascontiguousarray(a) for a in (y, W, c))
    losses = np.empty(T, dtype=X.dtype)
    G = np.empty((T, h, d), dtype=X.dtype)
    gc = np.empty((T, h), dtype=X.dtype)
    threads_for(T * n * h * d)
    _loss_grad_blocks(XT, y, np.ascontiguousarray(n_rows, dtype=np.int64), W, c, blocks_per_task(T, n),
                      losses, G, gc)
    return losses, G, gc
