"""A batch of implicit matrices ``G_t = shared + P_t Q_tᵀ``.

Gradients of the population loss with a factored target are of this form; applying them
to all tasks' adapters costs one GEMM of width T·r with ``shared`` instead of T dense
(d_out × d_in) matrices.  Parameterizations that set ``implicit_gradient = True`` accept it
in ``pullback`` wherever a dense (T, d_out, d_in) array could appear, using only ``G @ X``
and ``G.swapaxes(-1, -2)``.
"""
from __future__ import annotations

from .arrays import flat_rows, from_rows


class SharedPlusLowRank:
    """``G_t = shared + P_t Q_tᵀ``: shared (d_out, d_in), P (T, d_out, m), Q (T, d_in, m)."""

    __array_priority__ = 1000

    def __init__(self, shared, P, Q):
        self.shared, self.P, self.Q = shared, P, Q

    @property
    def shape(self):
        return (self.P.shape[0], *self.shared.shape)

    @property
    def ndim(self) -> int:
        return 3

    def __matmul__(self, X):
        """(T, d_in, r) -> (T, d_out, r): shared·X_t as one GEMM, plus P_t (Q_tᵀ X_t)."""
        T = X.shape[0]
        shared_part = from_rows(flat_rows(X) @ self.shared.T, T)
        return shared_part + self.P @ (self.Q.swapaxes(-1, -2) @ X)

    def swapaxes(self, a: int, b: int) -> "SharedPlusLowRank":
        if {a % 3, b % 3} != {1, 2}:
            raise ValueError("only the two matrix axes of an implicit batch can be swapped")
        return SharedPlusLowRank(self.shared.T, self.Q, self.P)

    def dense(self):
        return self.shared[None, :, :] + self.P @ self.Q.swapaxes(-1, -2)
