"""Baseline: textbook ALS for symmetric LoRA-ML in population mode.

Materialises every W*_t (T dense d×d matrices) and takes a full eigendecomposition of each
task's symmetrised residual in every iteration:

    U_t ← top-k positive eigenpairs of sym(W*_t − A)         (numpy.linalg.eigh, O(d³) per task)
    A   ← mean_t (W*_t − U_t U_tᵀ)

It is the same iteration as fastlora's ``adapter_step="exact"``, written the obvious way.
"""
from __future__ import annotations

import time

import numpy as np


def dense_als(W_star: np.ndarray, k: int, A_star: np.ndarray | None = None, max_iter: int = 1000,
              tol_rel_A: float = 1e-8, time_limit: float | None = None):
    """Run until ‖A − A*‖/‖A*‖ ≤ tol_rel_A (if A* given), max_iter, or time_limit seconds.

    Returns dict(A, iterations, seconds, rel_err_A, seconds_per_iteration, reached).
    """
    T = W_star.shape[0]
    start = time.perf_counter()
    A = W_star.mean(axis=0)
    rel, iterations = float("nan"), 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        UUt = np.empty_like(W_star)
        for t in range(T):
            R = W_star[t] - A
            lam, V = np.linalg.eigh(0.5 * (R + R.T))
            lam, V = np.maximum(lam[-k:], 0.0), V[:, -k:]
            UUt[t] = (V * lam) @ V.T
        A = (W_star - UUt).mean(axis=0)
        if A_star is not None:
            rel = float(np.linalg.norm(A - A_star) / np.linalg.norm(A_star))
            if rel <= tol_rel_A:
                break
        if time_limit is not None and time.perf_counter() - start > time_limit:
            break
    seconds = time.perf_counter() - start
    return {"A": A, "iterations": iterations, "seconds": seconds, "rel_err_A": rel,
            "seconds_per_iteration": seconds / iterations,
            "reached": bool(rel <= tol_rel_A)}
