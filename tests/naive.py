"""Slow, obviously correct implementations (after stumpy's tests/naive.py): the oracle that the
reference kernels *and* every backend are tested against.

Plain loops over tasks, full decompositions, formulas written as in docs/design.md §2 — and, where
the production code uses a trick, computed another way (a projector instead of a basis, an
explicit matrix instead of an implicit product).  Never fast, never clever.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg


# --- the objective of docs/design.md §2 --------------------------------------------------------------
def task_loss(task, W) -> float:
    """L_t(W): ½‖W − W*‖² (population) or ½ tr(W Σ Wᵀ) − tr(W Cᵀ) + s (finite sample)."""
    if task.is_population:
        return 0.5 * float(np.sum((W - task.W_star) ** 2))
    return float(0.5 * np.trace(W @ task.Sigma @ W.T) - np.trace(W @ task.C.T) + task.s)


def task_gradient(task, W):
    """∇L_t(W): W − W* (population) or WΣ − C."""
    return W - task.W_star if task.is_population else W @ task.Sigma - task.C


def objective(tasks, A, deltas) -> float:
    """Σ_t L_t(A + Δ_t)."""
    return sum(task_loss(task, A + deltas[t]) for t, task in enumerate(tasks))


# --- best fits by full decompositions ------------------------------------------------------------
def best_psd_fit(R, rank):
    """argmin over PSD Δ of rank ≤ r of ½‖Δ − R‖²: the top-r positive eigenpairs of sym(R)."""
    lam, V = np.linalg.eigh(0.5 * (R + R.T))
    out = np.zeros_like(R)
    for i in np.argsort(lam)[::-1][:rank]:
        if lam[i] > 0:
            out += lam[i] * np.outer(V[:, i], V[:, i])
    return out


def best_lowrank_fit(R, rank):
    """argmin over Δ of rank ≤ r of ½‖Δ − R‖²: the truncated SVD (Eckart–Young)."""
    P, s, Vt = np.linalg.svd(R)
    return sum(s[i] * np.outer(P[:, i], Vt[i]) for i in range(min(rank, len(s))))


def whitened_lowrank_fit(task, A, rank):
    """Finite samples: argmin over Δ of rank ≤ r of L(A + Δ), by whitening with scipy's sqrtm:
    Δ = [(C − AΣ) Σ^{-1/2}]_r Σ^{-1/2} (Σ invertible)."""
    root = np.real(scipy.linalg.sqrtm(task.Sigma))
    inv_root = np.linalg.inv(root)
    return best_lowrank_fit((task.C - A @ task.Sigma) @ inv_root, rank) @ inv_root


def als(tasks, rank, fit="psd", iters=20000, tol=1e-13):
    """Textbook population ALS from the standard solution: Δ_t = best fit of W*_t − A, A = mean(W*_t − Δ_t).
    Returns (A, deltas)."""
    W = [t.W_star for t in tasks]
    best = best_psd_fit if fit == "psd" else best_lowrank_fit
    A = sum(W) / len(W)
    deltas = [np.zeros_like(A)] * len(W)
    for _ in range(iters):
        deltas = [best(Wt - A, rank) for Wt in W]
        new = sum(Wt - Dt for Wt, Dt in zip(W, deltas)) / len(W)
        if np.linalg.norm(new - A) <= tol * np.linalg.norm(new):
            A = new
            break
        A = new
    return A, [best(Wt - A, rank) for Wt in W]


# --- the kernels of fastlora.kernels.reference, per task and entry by entry ------------------------
def apply_shared_lowrank(X, shared_t, L, R):
    """out[t] = X[t] @ shared_t + (X[t] @ L[t]ᵀ) @ R[t], with explicit sums."""
    T, r, _ = X.shape
    m = shared_t.shape[1]
    out = np.zeros((T, r, m))
    for t in range(T):
        Op = shared_t + L[t].T @ R[t]           # the whole operator as one matrix
        for i in range(r):
            out[t, i] = X[t, i] @ Op
    return out


def gram_schmidt_rows(Y):
    """Orthonormal rows spanning Y[t], by classical Gram–Schmidt in Python loops (Y of full rank)."""
    out = np.zeros_like(Y, dtype=np.float64)
    for t in range(Y.shape[0]):
        for i in range(Y.shape[1]):
            v = Y[t, i].astype(np.float64)
            for _ in range(2):
                for j in range(i):
                    v = v - (v @ out[t, j]) * out[t, j]
            out[t, i] = v / np.linalg.norm(v)
    return out


def projector(Q):
    """Q_tᵀ Q_t per task: the orthogonal projector onto the row span (basis-independent)."""
    return np.stack([q.T @ q for q in np.asarray(Q, dtype=np.float64)])


def ritz_psd_product(Q, Y):
    """UᵀU of reference.ritz_psd, as a matrix: restrict sym(Q_tᵀ Y_t-operator) to span(Q_t),
    keep its positive part: Q_tᵀ [sym(Q_t Y_tᵀ)]₊ Q_t."""
    out = []
    for q, y in zip(np.asarray(Q, np.float64), np.asarray(Y, np.float64)):
        H = q @ y.T
        lam, V = np.linalg.eigh(0.5 * (H + H.T))
        plus = sum(max(lam[i], 0.0) * np.outer(V[:, i], V[:, i]) for i in range(len(lam)))
        out.append(q.T @ plus @ q)
    return np.stack(out)


def ritz_general_product(P, Z):
    """BᵀC of reference.ritz_general: P_tᵀ Z_t (the best fit inside span(P_t) of a rank-r row space)."""
    return np.stack([p.T @ z for p, z in zip(np.asarray(P, np.float64), np.asarray(Z, np.float64))])


def gram_sum(B, C):
    """Σ_t B[t]ᵀ C[t]."""
    return sum(b.T @ c for b, c in zip(np.asarray(B, np.float64), np.asarray(C, np.float64)))


def gram_inner(B1, C1, B2, C2):
    """⟨B1_tᵀC1_t, B2_tᵀC2_t⟩_F from the dense products."""
    return np.array([np.sum((b1.T @ c1) * (b2.T @ c2)) for b1, c1, b2, c2 in zip(B1, C1, B2, C2)], dtype=np.float64)


def lowrank_diff_sq(B1, C1, B2, C2):
    """‖B1_tᵀC1_t − B2_tᵀC2_t‖²_F from the dense difference."""
    return np.array([np.sum((b1.T @ c1 - b2.T @ c2) ** 2) for b1, c1, b2, c2 in zip(B1, C1, B2, C2)],
                    dtype=np.float64)


def residual_stats(S, A_new, A_old, symmetrize):
    """(D, [‖D‖², ‖S − A‖², ‖A − A_old‖², ‖A‖²]) entry by entry."""
    S, A_new, A_old = (np.asarray(a, np.float64) for a in (S, A_new, A_old))
    n, m = S.shape
    D = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            D[i, j] = 0.5 * ((S[i, j] - A_new[i, j]) + (S[j, i] - A_new[j, i])) if symmetrize else S[i, j] - A_new[i, j]
    return D, [float(np.sum(D ** 2)), float(np.sum((S - A_new) ** 2)), float(np.sum((A_new - A_old) ** 2)),
               float(np.sum(A_new ** 2))]


def lbfgs_direction(S, Y, valid, grad, gamma):
    """H·∇ with H built by the BFGS inverse update H ← (I − ρsyᵀ) H (I − ρysᵀ) + ρssᵀ from
    H₀ = γI over the valid pairs, oldest first: an explicit n×n matrix per problem."""
    P, m, n = S.shape
    out = np.empty((P, n))
    for p in range(P):
        H = gamma[p] * np.eye(n)
        for i in range(m):
            if not valid[p, i]:
                continue
            s, y = np.asarray(S[p, i], np.float64), np.asarray(Y[p, i], np.float64)
            rho = 1.0 / (y @ s)
            V = np.eye(n) - rho * np.outer(y, s)
            H = V.T @ H @ V + rho * np.outer(s, s)
        out[p] = H @ np.asarray(grad[p], np.float64)
    return out


def exact_task_loss(W, Sigma, C, s) -> float:
    """½⟨WΣ, W⟩ − ⟨W, C⟩ + s in exact rational arithmetic over the floats as given, rounded once."""
    from fractions import Fraction
    W, Sigma, C = ([[Fraction(float(x)) for x in row] for row in M] for M in (W, Sigma, C))
    n, m = len(W), len(W[0])
    quadratic = sum(W[i][j] * Sigma[j][k] * W[i][k] for i in range(n) for j in range(m) for k in range(m))
    return float(quadratic / 2 - sum(W[i][k] * C[i][k] for i in range(n) for k in range(m)) + Fraction(float(s)))
