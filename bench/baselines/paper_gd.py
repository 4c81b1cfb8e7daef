"""Baseline: the paper's own synthetic procedure, as its public code describes it.

Plain alternating gradient descent on the raw data (no sufficient statistics): for each
of ``outer_steps`` (3000) outer steps, 10 gradient steps on every U_t (step 0.003, gradient
divided by N), then one on A (step 0.03, gradient divided by N·T).  A starts at 0,
U_t ~ N(0, 0.1²).  The per-task loss is Σ_i ½‖(A + U_t U_tᵀ) x_i − y_i‖².
"""
from __future__ import annotations

import time

import numpy as np


def paper_gd(X: np.ndarray, Y: np.ndarray, k: int, outer_steps: int = 3000, inner_steps: int = 10,
             lr_U: float = 0.003, lr_A: float = 0.03, seed: int = 0):
    """X (T, N, d), Y (T, N, d).  Returns dict(A, U, seconds, objective)."""
    T, N, d = X.shape
    rng = np.random.default_rng(seed)
    A = np.zeros((d, d))
    U = 0.1 * rng.standard_normal((T, d, k))
    start = time.perf_counter()

    def grad_W(t, W):
        R = X[t] @ W.T - Y[t]          # (N, d) residuals on the raw data
        return R.T @ X[t]              # Σ_i (W x_i − y_i) x_iᵀ

    for _ in range(outer_steps):
        for t in range(T):
            for _ in range(inner_steps):
                G = grad_W(t, A + U[t] @ U[t].T) / N
                U[t] -= lr_U * (G + G.T) @ U[t]
        GA = sum(grad_W(t, A + U[t] @ U[t].T) for t in range(T)) / (N * T)
        A -= lr_A * GA
    seconds = time.perf_counter() - start
    return {"A": A, "U": U, "seconds": seconds, "objective": meta_objective(X, Y, A, U)}


def meta_objective(X, Y, A, U) -> float:
    """Σ_t (1/2N) Σ_i ‖(A + U_t U_tᵀ) x_i − y_i‖², fastlora's objective."""
    T, N, _ = X.shape
    total = 0.0
    for t in range(T):
        R = X[t] @ (A + U[t] @ U[t].T).T - Y[t]
        total += 0.5 * float(np.sum(R * R)) / N
    return total
