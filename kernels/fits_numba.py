"""Numba forms of the primitives of :mod:`fastlora.kernels.fits`, registered as overloads, and that
module's loops compiled with them (:func:`compiled_loops`); the engine's compiled A step runs them
too.  Plain loops: at d ≤ 32 a LAPACK call costs more than the arithmetic.  tests/test_engine.py checks them against the
numpy forms and the floor against exact rational arithmetic (tests/naive.py)."""
from __future__ import annotations

import numpy as np
from numba.extending import overload

import fastlora.kernels as contract

from . import fits


@overload(fits.cholesky_inverse, jit_options={"fastmath": {"contract"}})
def _cholesky_inverse(M, rtol, out):
    def impl(M, rtol, out):
        d = M.shape[0]
        L = np.zeros((d, d))
        for j in range(d):  # M = L Lᵀ, column by column
            pivot = M[j, j]
            for k in range(j):
                pivot -= L[j, k] * L[j, k]
            if not pivot > 0:  # not positive definite (or NaN)
                return False
            L[j, j] = np.sqrt(pivot)
            for i in range(j + 1, d):
                v = M[i, j]
                for k in range(j):
                    v -= L[i, k] * L[j, k]
                L[i, j] = v / L[j, j]
        L_inv = np.zeros((d, d))  # lower triangular, by forward substitution
        frobenius = 0.0
        trace = 0.0
        for j in range(d):
            L_inv[j, j] = 1.0 / L[j, j]
            for i in range(j + 1, d):
                v = 0.0
                for k in range(j, i):
                    v -= L[i, k] * L_inv[k, j]
                L_inv[i, j] = v / L[i, i]
            for i in range(j, d):
                frobenius += L_inv[i, j] * L_inv[i, j]
            trace += M[j, j]
        if not frobenius > 0:  # every pivot infinite (or NaN)
            return False
        bound = 1.0 / frobenius
        if not (np.isfinite(bound) and np.isfinite(trace) and bound > rtol * trace):
            return False
        for i in range(d):  # M⁻¹ = L⁻ᵀ L⁻¹
            for j in range(i + 1):
                v = 0.0
                for k in range(i, d):
                    v += L_inv[k, i] * L_inv[k, j]
                out[i, j] = v
                out[j, i] = v
        return True
    return impl


# Dekker's splitting constant 2^27 + 1: a = hi + lo with hi, lo of 26 bits, so products of halves are exact
_SPLITTER = 134217729.0


# fastmath off, explicitly (a caller's flags are inherited otherwise): the error-free transformations
# need IEEE order and rounding, no contraction and no reassociation
@overload(fits.fit_floor, jit_options={"fastmath": False})
def _fit_floor(W, Sigma, C, s):
    def impl(W, Sigma, C, s):
        n, m = W.shape
        S_hi = np.empty((m, m))
        S_lo = np.empty((m, m))
        for j in range(m):
            for k in range(m):
                t = _SPLITTER * Sigma[j, k]
                S_hi[j, k] = t - (t - Sigma[j, k])
                S_lo[j, k] = Sigma[j, k] - S_hi[j, k]
        g_hi = np.empty(m)   # a row of W Σ in double-double (g_hi + g_lo), lanes over k
        g_lo = np.empty(m)
        acc_hi = np.zeros(m)  # the sum, per lane k, in double-double
        acc_lo = np.zeros(m)
        for i in range(n):
            g_hi[:] = 0.0
            g_lo[:] = 0.0
            for j in range(m):
                a = W[i, j]
                t = _SPLITTER * a
                a_hi = t - (t - a)
                a_lo = a - a_hi
                for k in range(m):
                    p = a * Sigma[j, k]  # TwoProduct: p + e = a·Σ_jk exactly
                    e = ((a_hi * S_hi[j, k] - p) + a_hi * S_lo[j, k] + a_lo * S_hi[j, k]) + a_lo * S_lo[j, k]
                    h = g_hi[k] + p      # TwoSum: h + σ = g_hi + p exactly
                    b = h - g_hi[k]
                    g_lo[k] += ((g_hi[k] - (h - b)) + (p - b)) + e
                    g_hi[k] = h
            for k in range(m):
                a = W[i, k]
                t = _SPLITTER * a
                a_hi = t - (t - a)
                a_lo = a - a_hi
                for x, tail in ((0.5 * g_hi[k], 0.5 * g_lo[k]), (-C[i, k], 0.0)):  # ½(WΣ)_ik·W_ik − C_ik·W_ik
                    t = _SPLITTER * x
                    x_hi = t - (t - x)
                    x_lo = x - x_hi
                    p = x * a
                    e = ((x_hi * a_hi - p) + x_hi * a_lo + x_lo * a_hi) + x_lo * a_lo + tail * a
                    h = acc_hi[k] + p
                    b = h - acc_hi[k]
                    acc_lo[k] += ((acc_hi[k] - (h - b)) + (p - b)) + e
                    acc_hi[k] = h
        hi = s
        lo = 0.0
        for k in range(m):
            for p in (acc_hi[k], acc_lo[k]):
                h = hi + p
                b = h - hi
                lo += (hi - (h - b)) + (p - b)
                hi = h
        value = hi + lo
        if np.isfinite(value):
            return value
        # the splitting overflows beyond ~1e300: the plain sum (such scales are not fitted by Cholesky anyway)
        total = s
        for i in range(n):
            for k in range(m):
                g = 0.0
                for j in range(m):
                    g += W[i, j] * Sigma[j, k]
                total += (0.5 * g - C[i, k]) * W[i, k]
        return total
    return impl


@contract.PerCacheRoot
def compiled_loops(cache_root: str, announce=None) -> tuple:
    """(cholesky_fits, fit_floors) of :mod:`fastlora.kernels.fits` compiled for float64 C-ordered
    arrays (or loaded from the on-disk cache under ``cache_root``), once per process.  ``announce``: a
    context manager factory wrapped around compiling where the cache lacks either loop (a notice; a
    load, however slow on a busy machine, is not compiling)."""
    from numba import types
    f8, vector = types.Array(types.float64, 3, "C"), types.Array(types.float64, 1, "C")
    signatures = ((f8, f8, types.float64, f8, types.Array(types.boolean, 1, "C")), (f8, f8, f8, vector, vector))
    # one cache folder per version of this module and fits' (the loops' Numba forms live here)
    folder = str(contract.source_folder(cache_root, "fits", (fits.__file__, __file__)))
    loops = tuple(contract.njit_cached(fn, folder, error_model="numpy") for fn in (fits.cholesky_fits, fits.fit_floors))
    contract.compile_announced(zip(loops, signatures), announce)
    return loops


is_compiled = compiled_loops.ready  # whether compiled_loops is ready in this process (a call then costs nothing)
