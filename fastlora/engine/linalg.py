"""Small dense linear-algebra primitives of the engine, in their numpy form.

These are the engine's BLAS: products, inner products, copies and updates of 1-d to 3-d
arrays.  Here they call numpy; :mod:`fastlora.engine._numba_linalg` gives Numba loop versions
that compiled code uses instead (no BLAS call overhead on the engine's small matrices, no
temporaries, and no broadcasting checks, whose error messages cost seconds of compile time).
tests/test_engine.py checks the two agree.
"""
from __future__ import annotations

import numpy as np

from ..kernels.fits import cholesky_inverse  # noqa: F401  (an engine primitive too: the A step's G⁺)


def matmul(a, b, out):
    """out[:] = a @ b (2-d arrays of any layout; ``out`` must not overlap a or b)."""
    np.matmul(a, b, out=out)


def matmul_bt(a, b, out):
    """out[:] = a @ bᵀ (rows of a against rows of b: the fast form for a symmetric b, or a transposed one)."""
    np.matmul(a, b.T, out=out)


def matmul_add(a, b, out, alpha):
    """out += alpha · (a @ b)."""
    out += alpha * (a @ b)


def matmul_tn_add(a, b, out, alpha):
    """out += alpha · (aᵀ @ b): a sum of outer products of the rows of a (r, n) and b (r, m), the
    form of a factored Δ = BᵀC kept as row buffers (no transposed view, whose layout compiles slowly)."""
    out += alpha * (a.T @ b)


def inner(a, b):
    """Σ a·b over all entries of two arrays of one shape (1-d or 2-d), as a float."""
    return float(np.vdot(a, b)) if a.flags.c_contiguous and b.flags.c_contiguous else float(np.sum(a * b))


# a sum of squares in here is √(inner) exactly as computed: far from float64's underflow and overflow
SQUARES_SAFE = (1e-280, 1e280)


def norm(x):
    """‖x‖₂ (over all entries) without overflow or underflow of the squares: √⟨x, x⟩ where that sum
    lies in ``SQUARES_SAFE`` (the same bits as before), else scaled by the largest |entry| as BLAS's
    nrm2 — an objective scaled by 1e155 (or 1e20 in float32) has gradients whose squares overflow.
    NaN and ±inf propagate."""
    squares = inner(x, x) if x.ndim <= 2 else float(np.sum(x * x))
    if SQUARES_SAFE[0] < squares < SQUARES_SAFE[1]:
        return float(np.sqrt(squares))
    largest = float(np.max(np.abs(x))) if x.size else 0.0
    if not (largest > 0 and np.isfinite(largest)):
        return largest
    scaled = x / largest
    return largest * float(np.sqrt(np.sum(scaled * scaled)))


def row_norms(xp, x):
    """:func:`norm` of every row of a 2-d array (P, n), on any array module; host floats (P,)."""
    if not x.shape[1]:
        return xp.zeros(x.shape[0])
    squares = xp.sum(x * x, axis=1)
    if bool(xp.all((squares > SQUARES_SAFE[0]) & (squares < SQUARES_SAFE[1]))):
        return xp.sqrt(squares)
    largest = xp.max(xp.abs(x), axis=1, keepdims=True)
    safe = xp.where((largest > 0) & xp.isfinite(largest), largest, 1.0)
    scaled = x / safe
    return safe[:, 0] * xp.sqrt(xp.sum(scaled * scaled, axis=1))


def axpy(alpha, x, y):
    """y += alpha · x (arrays of one shape, 1-d to 3-d)."""
    y += alpha * x


def copy(src, dst):
    """dst[...] = src (arrays of one shape, 1-d to 3-d)."""
    dst[...] = src


def scale(alpha, x):
    """x *= alpha."""
    x *= alpha


def fill(x, value):
    """x[...] = value."""
    x[...] = value


def adam_moments(grad, m, v, b1, b2):
    """Adam's moment updates in place: m = b1·m + (1 − b1)·g, v = b2·v + (1 − b2)·g² (elementwise)."""
    m *= b1
    m += (1.0 - b1) * grad
    v *= b2
    v += (1.0 - b2) * grad * grad


def adam_apply(x, m, v, lr1, c2, eps):
    """x −= lr1·m / (sqrt(c2·v) + eps) elementwise (lr1, c2: the step and bias corrections)."""
    x -= lr1 * m / (np.sqrt(c2 * v) + eps)


def task_residual(A, delta, W_hat, Sigma, E, G, identity):
    """One task's residual and loss in the quadratic form (docs/design.md §2): E = A + Δ − Ŵ,
    G = E Σ (= E where ``identity``; Σ is symmetric), returns ½⟨G, E⟩."""
    E[...] = A
    E += delta
    E -= W_hat
    if identity:
        G[...] = E
    else:
        np.matmul(E, Sigma, out=G)
    return 0.5 * inner(G, E)


def symmetric_eigen(H):
    """(eigenvalues ascending, eigenvectors as columns) of H, exactly symmetric (the compiled form reads
    both triangles, eigh the lower one) — ``np.linalg.eigh``.  The compiled form diagonalises small H
    by cyclic Jacobi rotations (:mod:`fastlora.engine._numba_linalg`): a LAPACK call costs more than
    the arithmetic there."""
    return np.linalg.eigh(H)
