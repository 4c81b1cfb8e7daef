"""Numba kernels of tied LoRA (``TiedLoRA.fast_paths["numba"]``); imported on first use only.

They compute what :meth:`TiedLoRA.delta` and :meth:`TiedLoRA.pullback` compute (parity
tests: 1e-12 relative in float64), fused so that the dense gradient batch G (T, d_out, d_in)
is read once: G_t·C and G_tᵀ·B come from the same pass over each row of G_t, where numpy
reads G twice (two batched GEMMs of width r) and writes two (T, ·, r) temporaries per product.
Compiled with fastlora's kernel decorator (its on-disk cache and fastmath flags); each wrapper
first calls ``threads_for`` with the size of what its kernel reads, so small inputs run on the
calling thread (waking Numba's pool costs more than they do) and large ones on every core.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from fastlora.kernels.numba_cpu import kernel, threads_for


@kernel(parallel=True)
def _delta_kernel(B, Ct, s, out):
    """out[t, i, :] = Σ_k B[i, k] s[t, k] Ct[k, :] — rows spread over threads."""
    T, d_out, d_in = out.shape
    r = B.shape[1]
    for row in prange(T * d_out):
        t, i = row // d_out, row % d_out
        line = out[t, i]
        for j in range(d_in):
            line[j] = 0.0
        for k in range(r):
            weight = B[i, k] * s[t, k]
            basis = Ct[k]
            for j in range(d_in):
                line[j] += weight * basis[j]


@kernel(parallel=True)
def _pullback_kernel(G, B, Ct, s, GC, BtG, grad_s, grad_B, grad_Ct):
    """One pass over G per task: GC_t = G_t C (d_out, r) and BtG_t = Bᵀ G_t (r, d_in); then
    grad_s[t, k] = Σ_i GC[t, i, k] B[i, k], grad_B = Σ_t GC_t diag(s_t), grad_Ct = Σ_t diag(s_t) BtG_t."""
    T, d_out, d_in = G.shape
    r = B.shape[1]
    for t in prange(T):
        for k in range(r):
            for j in range(d_in):
                BtG[t, k, j] = 0.0
        for i in range(d_out):
            g = G[t, i]
            for k in range(r):
                basis, acc_row, b = Ct[k], BtG[t, k], B[i, k]
                acc = 0.0
                for j in range(d_in):
                    acc += g[j] * basis[j]
                    acc_row[j] += b * g[j]
                GC[t, i, k] = acc
        for k in range(r):
            acc = 0.0
            for i in range(d_out):
                acc += GC[t, i, k] * B[i, k]
            grad_s[t, k] = acc
    for i in prange(d_out):
        for k in range(r):
            acc = 0.0
            for t in range(T):
                acc += GC[t, i, k] * s[t, k]
            grad_B[i, k] = acc
    for k in prange(r):
        for j in range(d_in):
            grad_Ct[k, j] = 0.0
        for t in range(T):
            weight = s[t, k]
            for j in range(d_in):
                grad_Ct[k, j] += weight * BtG[t, k, j]


def _operands(params):
    s = params["s"]
    dtype = s.dtype
    return (np.ascontiguousarray(params["B"], dtype=dtype), np.ascontiguousarray(params["C"].T, dtype=dtype),
            np.ascontiguousarray(s))


def delta(params):
    """TiedLoRA.delta: (T, d_out, d_in) in the dtype of the parameters."""
    B, Ct, s = _operands(params)
    out = np.empty((s.shape[0], B.shape[0], Ct.shape[1]), dtype=s.dtype)
    threads_for(out.size)
    _delta_kernel(B, Ct, s, out)
    return out


def pullback(params, G):
    """TiedLoRA.pullback for a dense G (T, d_out, d_in)."""
    B, Ct, s = _operands(params)
    G = np.ascontiguousarray(G, dtype=s.dtype)
    T, d_out, d_in = G.shape
    r = B.shape[1]
    GC, BtG = np.empty((T, d_out, r), s.dtype), np.empty((T, r, d_in), s.dtype)
    grad_s, grad_B, grad_Ct = np.empty((T, r), s.dtype), np.empty((d_out, r), s.dtype), np.empty((r, d_in), s.dtype)
    threads_for(G.size)
    _pullback_kernel(G, B, Ct, s, GC, BtG, grad_s, grad_B, grad_Ct)
    return {"s": grad_s, "B": grad_B, "C": grad_Ct.T.copy()}
