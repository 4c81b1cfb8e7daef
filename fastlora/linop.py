"""A batch of implicit matrices ``G_t = shared + P_t Q_tᵀ``.

Gradients of the population loss with a factored target are of this form; applying them
to all tasks' adapters costs one GEMM of width T·r with ``shared`` instead of T dense
(d_out × d_in) matrices.  Parameterizations that set ``implicit_gradient = True`` accept it
in ``pullback`` wherever a dense (T, d_out, d_in) array could appear, using only ``G @ X``
and ``G.swapaxes(-1, -2)``.
"""
from __future__ import annotations

import numpy as np


class SharedPlusLowRank:
    """``G_t = shared + P_tᵀ Q_t`` with shared (d_out, d_in) and rows P (T, m, d_out), Q (T, m, d_in).

    ``kernels`` is the backend's kernel set (numpy reference by default); products go
    through its ``apply_shared_lowrank``.
    """

    __array_priority__ = 1000

    def __init__(self, shared, P_rows, Q_rows, kernels=None):
        if kernels is None:
            from .kernels import reference as kernels
        self.shared, self.P, self.Q, self.kernels = shared, P_rows, Q_rows, kernels

    @property
    def shape(self):
        return (self.P.shape[0], *self.shared.shape)

    @property
    def ndim(self) -> int:
        return 3

    def __matmul__(self, X):
        """(T, d_in, r) -> (T, d_out, r): shared·X_t as one GEMM of width T·r, plus P_tᵀ (Q_t X_t)."""
        rows = self.kernels.apply_shared_lowrank(X.swapaxes(-1, -2), self.shared.T, self.Q, self.P)
        return rows.swapaxes(-1, -2)

    def swapaxes(self, a: int, b: int) -> SharedPlusLowRank:
        if {a % 3, b % 3} != {1, 2}:
            raise ValueError("only the two matrix axes of an implicit batch can be swapped")
        return SharedPlusLowRank(self.shared.T, self.Q, self.P, self.kernels)

    def dense(self):
        return self.shared[None, :, :] + self.P.swapaxes(-1, -2) @ self.Q


class LowRankUpdate:
    """One matrix ``A = base + left @ rightᵀ`` kept in that form: base (d_out, d_in) or None
    (zero), left (d_out, m), right (d_in, m).  What the reduced solver returns when a dense A
    is not wanted (``dense_A=False``), and a fine-tuned update on it: products, norms and
    fine-tuning never form the (d_out × d_in) sum.
    """

    __array_priority__ = 1000

    def __init__(self, base, left, right, *, basis=None, core=None):
        shape = (left.shape[0], right.shape[0])
        if left.shape[1] != right.shape[1] or (base is not None and base.shape != shape):
            raise ValueError(f"LowRankUpdate: base {None if base is None else base.shape}, left {left.shape}, "
                             f"right {right.shape} do not fit")
        self.base, self.left, self.right = base, left, right
        # optional: left = basis @ core with orthonormal basis and right (the reduced solver's
        # Q_out E, Q_in), which lets products with new directions stay in small coordinates
        self.basis, self.core = basis, core

    @property
    def shape(self):
        return (self.left.shape[0], self.right.shape[0])

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self):
        return self.left.dtype

    @property
    def T(self) -> LowRankUpdate:
        return LowRankUpdate(None if self.base is None else self.base.T, self.right, self.left)

    def dense(self):
        """base + left rightᵀ as an array (one GEMM of inner dimension m)."""
        product = self.left @ self.right.T
        return product if self.base is None else self.base + product

    def __array__(self, dtype=None, copy=None):
        out = self.dense()
        return out if dtype is None else out.astype(dtype)

    def __matmul__(self, X):
        """A @ X = base X + left (rightᵀ X)."""
        low = self.left @ (self.right.T @ X)
        return low if self.base is None else self.base @ X + low

    def __rmatmul__(self, X):
        """X @ A = X base + (X left) rightᵀ."""
        low = (X @ self.left) @ self.right.T
        return low if self.base is None else X @ self.base + low

    def correction_norm(self) -> float:
        """‖left rightᵀ‖_F = ‖A − base‖_F from m×m Grams."""
        gram = np.asarray(self.left.T @ self.left) * np.asarray(self.right.T @ self.right)
        return float(np.sqrt(max(float(np.sum(gram)), 0.0)))

    def __repr__(self) -> str:
        return f"LowRankUpdate(shape={self.shape}, rank<={self.left.shape[1]})"
