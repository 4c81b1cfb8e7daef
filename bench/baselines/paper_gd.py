"""Baseline: the paper's own synthetic procedure, in the layout of its public code.

Re-implemented after ``linear/learners.py`` of jacob-block/peft-ml (commit bf9c67b,
``MetaLearner`` with ``symmetric=True``): the tasks are stacked in (T, d, N) arrays and every
step is one batched matmul over tasks.  Plain alternating gradient descent on the raw data:
for each of ``outer_steps`` (3000) outer steps, ``inner_steps`` (10) gradient steps on all
U_t at once (step 0.003, gradient divided by N), then one on A (step 0.03, gradient divided by
N·T).  A starts at 0, U_t ~ N(0, 0.1²).  The per-task loss is Σ_i ½‖(A + U_t U_tᵀ) x_i − y_i‖².
Their constructor's unused products (``XXT``, the asymmetric ``V``) are left out.
"""
from __future__ import annotations

import time

import numpy as np


def paper_gd(X: np.ndarray, Y: np.ndarray, k: int, outer_steps: int = 3000, inner_steps: int = 10,
             lr_U: float = 0.003, lr_A: float = 0.03, seed: int = 0):
    """X (T, d, N) inputs and Y (T, d, N) outputs, one column per sample (the authors' layout).

    Returns dict(A (d, d), U (T, d, k), seconds (the steps, set-up excluded), objective)."""
    T, d, N = X.shape
    rng = np.random.default_rng(seed)
    A = np.zeros((d, d))
    U = rng.normal(0.0, 0.1, (T, d, k))
    Xt = X.transpose(0, 2, 1)
    start = time.perf_counter()
    for _ in range(outer_steps):
        for _ in range(inner_steps):
            R = (A + U @ U.transpose(0, 2, 1)) @ X - Y                    # (T, d, N) residuals
            U -= lr_U * ((X @ R.transpose(0, 2, 1) + R @ Xt) @ U) / N
        A -= lr_A * (((A + U @ U.transpose(0, 2, 1)) @ X - Y) @ Xt).sum(axis=0) / (N * T)
    seconds = time.perf_counter() - start
    return {"A": A, "U": U, "seconds": seconds, "objective": meta_objective(X, Y, A, U)}


def meta_objective(X, Y, A, U) -> float:
    """Σ_t (1/2N) Σ_i ‖(A + U_t U_tᵀ) x_i − y_i‖², fastlora's objective; X, Y (T, d, N)."""
    R = (A + U @ U.transpose(0, 2, 1)) @ X - Y
    return 0.5 * float(np.sum(R * R)) / X.shape[2]
