"""Reference kernels, generic over the array module (numpy in CI, cupy on GPUs).

Each function states the formula it computes — the contract of ``fastlora.kernels`` —;
``numba_cpu`` and ``cupy_gpu`` provide drop-in replacements that must agree to rounding
(tests/test_parity.py, tests/test_gpu.py), and tests/naive.py checks these against slow,
obviously correct loops.  ``PRIMITIVES`` are plain functions; ``COMPOSITES`` take the
backend's :class:`~fastlora.kernels.KernelSet` first and call kernels through it.
"""
from __future__ import annotations

from fastlora.kernels import ResidualNorms
from fastlora.kernels.arrays import array_module, frobenius_sq


def apply_shared_lowrank(X, shared_t, L, R):
    """Rows of ``Op_t X_t`` for ``Op_t = sharedᵀ-applied + low-rank``.

    out[t] = X[t] @ shared_t + (X[t] @ L[t]ᵀ) @ R[t]

    X (T, r, n), shared_t (n, m), L (T, k, n), R (T, k, m) -> (T, r, m).  With
    Op_t = D + B_t C_tᵀ and X the rows of a basis, ``shared_t = Dᵀ, L = C, R = B`` gives the
    rows of Op_t X_t; the shared part is one GEMM of width T·r.
    """
    T, r, n = X.shape
    out = (X.reshape(T * r, n) @ shared_t).reshape(T, r, -1)
    return out + (X @ L.swapaxes(1, 2)) @ R


def orthonormalize_rows(Y):
    """Orthonormal rows spanning each Y[t] (T, r, n): Householder QR of Y[t]ᵀ."""
    xp = array_module(Y)
    Q, _ = xp.linalg.qr(Y.swapaxes(1, 2))
    return xp.ascontiguousarray(Q.swapaxes(1, 2))


def ritz_psd(Q, Y):
    """Best PSD rank-r fit inside span(Q_t) of the symmetric operator with rows Y = Q R_t.

    H_t = sym(Q[t] Y[t]ᵀ) = W Λ Wᵀ (descending);  U rows = (W √Λ₊)ᵀ Q[t]  -> (T, r, n).
    """
    xp = array_module(Q)
    H = Q @ Y.swapaxes(1, 2)
    lam, W = xp.linalg.eigh(0.5 * (H + H.swapaxes(1, 2)))
    lam, W = lam[:, ::-1], W[:, :, ::-1]
    scaled = W * xp.sqrt(xp.maximum(lam, 0))[:, None, :]
    return scaled.swapaxes(1, 2) @ Q


def ritz_general(P, Z):
    """Best rank-r fit inside span(P_t): P_t P_tᵀ R_t = P_t Z_t with Z[t] = P[t] R_t (rows).

    Z[t] = W S Hᵀ (SVD);  B rows = (W √S)ᵀ P[t],  C rows = √S Hᵀ,  next right basis Hᵀ.
    Returns (B (T, r, m), C (T, r, n), V (T, r, n)).
    """
    xp = array_module(P)
    W, S, Ht = xp.linalg.svd(Z, full_matrices=False)
    root = xp.sqrt(S)
    B = (W * root[:, None, :]).swapaxes(1, 2) @ P
    C = Ht * root[:, :, None]
    return B, C, Ht


def psd_subspace_step(ops, Q, Y, shift):
    """One step of shifted subspace iteration with the PSD Rayleigh–Ritz fit (composite).

    Returns (ritz_psd(Q, Y), orthonormalize_rows(Y + shift·Q)): the best PSD fit inside the
    current basis and the next basis.  ``Y`` is **scratch**: a backend may return the next
    basis in its memory.
    """
    return ops.ritz_psd(Q, Y), ops.orthonormalize_rows(Y + shift * Q)


def gram_sum(B, C):
    """Σ_t B[t]ᵀ C[t] (B (T, r, m), C (T, r, n)) as one GEMM of width T·r — a SYRK when B is C
    (numpy and cupy detect ``Xᵀ @ X``)."""
    xp = array_module(B)
    T, r, m = B.shape
    Bf = xp.ascontiguousarray(B).reshape(T * r, m)
    return Bf.T @ (Bf if C is B else xp.ascontiguousarray(C).reshape(T * r, C.shape[2]))


def shared_plus_gram(M, B, C, alpha):
    """M + alpha · Σ_t B[t]ᵀ C[t]."""
    return M + alpha * gram_sum(B, C)


def gram_inner(B1, C1, B2, C2):
    """Per task ⟨B1_tᵀC1_t, B2_tᵀC2_t⟩_F = ⟨B1 B2ᵀ, C1 C2ᵀ⟩ from r×r Grams (T,)."""
    xp = array_module(B1)
    GB = B1 @ B2.swapaxes(1, 2)
    GC = C1 @ C2.swapaxes(1, 2)
    return xp.sum((GB * GC).reshape(GB.shape[0], -1), axis=1)


def lowrank_diff_sq(B1, C1, B2, C2):
    """Per task ‖B1[t]ᵀC1[t] − B2[t]ᵀC2[t]‖²_F (rows (T, k, m), (T, k, n)), accurate near 0.

    With Q = [C1; C2] and Qᵀ = Q̃ R (QR), the difference is [B1; −B2]ᵀ Rᵀ Q̃ᵀ, so its norm is
    ‖R [B1; −B2]‖_F: the rounding error scales with the difference, not with ‖B1ᵀC1‖².
    """
    xp = array_module(B1)
    R = xp.linalg.qr(xp.concatenate([C1, C2], axis=1).swapaxes(1, 2), mode="r")
    E = R @ xp.concatenate([B1, -B2], axis=1)
    return xp.sum((E * E).reshape(E.shape[0], -1), axis=1)


def residual_stats(S, A_new, A_old, symmetrize: bool):
    """D = S − A_new (or its symmetric part) and the squared norms of the ALS bookkeeping.

    Returns (D, ResidualNorms(‖D‖², ‖S − A_new‖², ‖A_new − A_old‖², ‖A_new‖²)) — the shift of
    the next subspace step, the objective identity, and the convergence test.
    """
    R = S - A_new
    D = 0.5 * (R + R.T) if symmetrize else R
    return D, ResidualNorms(frobenius_sq(D), frobenius_sq(R), frobenius_sq(A_new - A_old), frobenius_sq(A_new))


def shared_update_stats(ops, M, B, C, alpha, S, A_old, symmetrize: bool, out=None, gram=None):
    """A = shared_plus_gram(M, B, C, alpha), then residual_stats(S, A, A_old, symmetrize) (composite).

    Returns (A, D, norms): the closed-form A step of factored ALS and its bookkeeping,
    which a fast backend does in one pass over memory.  ``out`` (optional) is an output
    buffer (d_out, d_in) a backend may return D in; the reference allocates.  ``gram``
    (optional): gram_sum(B, C) already computed (e.g. by the objective at these adapters);
    a backend may overwrite it (returning A in its memory).
    """
    A = ops.shared_plus_gram(M, B, C, alpha) if gram is None else M + alpha * gram
    D, norms = ops.residual_stats(S, A, A_old, symmetrize)
    return A, D, norms


PRIMITIVES = {f.__name__: f for f in (apply_shared_lowrank, orthonormalize_rows, ritz_psd, ritz_general, gram_sum,
                                      shared_plus_gram, gram_inner, lowrank_diff_sq, residual_stats)}
COMPOSITES = {f.__name__: f for f in (psd_subspace_step, shared_update_stats)}
