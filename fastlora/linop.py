"""A batch of implicit matrices ``G_t = shared + P_t Q_tᵀ``.

Gradients of the population loss with a factored target are of this form; applying them
to all tasks' adapters costs one GEMM of width T·r with ``shared`` instead of T dense
(d_out × d_in) matrices.  Parameterizations that set ``implicit_gradient = True`` accept it
in ``pullback`` wherever a dense (T, d_out, d_in) array could appear, using only ``G @ X``
and ``G.swapaxes(-1, -2)``.
"""
from __future__ import annotations


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

    def swapaxes(self, a: int, b: int) -> "SharedPlusLowRank":
        if {a % 3, b % 3} != {1, 2}:
            raise ValueError("only the two matrix axes of an implicit batch can be swapped")
        return SharedPlusLowRank(self.shared.T, self.Q, self.P, self.kernels)

    def dense(self):
        return self.shared[None, :, :] + self.P.swapaxes(-1, -2) @ self.Q
