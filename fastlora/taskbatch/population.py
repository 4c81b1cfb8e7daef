"""The population batch kinds: dense targets W*_t, and factored ones S + B*_t C*_tᵀ with one shared S."""
from __future__ import annotations

import numpy as np

from ..arrays import array_module, batched_frobenius_sq, frobenius_sq, residual_spreads
from ..linop import SharedPlusLowRank
from .base import Batch
from .iterates import Iterate, SharedResidual, TaskResidual


def _pairings(D, B, C):
    """Per task ⟨D, B_tᵀC_t⟩_F = Σ_l B_t[l]·(D C_t[l]) for rows B (T, r, d_out), C (T, r, d_in): one GEMM."""
    xp = array_module(D)
    T, r, d_in = C.shape
    DC = (xp.ascontiguousarray(C).reshape(T * r, d_in) @ D.T).reshape(T, r, -1)
    return xp.sum((DC * B).reshape(T, -1), axis=1)


class DensePopulation(Batch):
    kind = "dense"

    def __init__(self, backend, dtype, W_star, P: int = 1):
        super().__init__(backend, dtype, P, W_star.shape[0] // P, *W_star.shape[1:])
        self.W_star = backend.asarray(W_star, dtype)

    def losses_W(self, W):
        return 0.5 * batched_frobenius_sq(W - self.W_star)

    def grad_W(self, W):
        return W - self.W_star

    def negative_gradient_at(self, A):
        """R_t = W*_t − A."""
        return self.W_star - self.per_task(A)

    def a_step(self, adapters, previous: Iterate | None = None, symmetric: bool = False) -> TaskResidual:
        return self.residual(self.minimizing_A(adapters), previous)

    def minimizing_A(self, adapters):
        """A = mean_t (W*_t − Δ_t) per problem."""
        target = self.W_star if adapters is None else self.W_star - adapters.to_dense()
        return self.sum_tasks(target) / self.T

    def standard_solution(self):
        return self.sum_tasks(self.W_star) / self.T

    def residual_spreads(self, A=None):
        """The scale of what the adapters fit from A (None: the mean target), host (P,)
        (:func:`fastlora.arrays.residual_spreads`)."""
        return residual_spreads(self._per_problem(self.W_star), None, A)


class FactoredPopulation(Batch):
    """One problem (P = 1) with W*_t = S + B*_t C*_tᵀ; the target factors are kept as rows
    ``B_rows`` (T, k, d_out), ``C_rows`` (T, k, d_in) for the shared GEMMs, and
    ``mean_target`` = mean_t W*_t.  The kernels see A as (d_out, d_in)."""

    kind = "factored"

    def __init__(self, backend, dtype, base, B_star, C_star, symmetric: bool):
        T, d_out, _ = B_star.shape
        super().__init__(backend, dtype, 1, T, d_out, base.shape[1])

        def cast(a):
            return backend.asarray(a, dtype)

        self.symmetric = symmetric
        self.base = cast(base)
        self.base_symmetric = base.shape[0] == base.shape[1] and bool(self.xp.array_equal(self.base, self.base.T))
        self.B_rows = cast(np.ascontiguousarray(np.swapaxes(B_star, 1, 2)))   # free if already rows
        self.C_rows = self.B_rows if symmetric else cast(np.ascontiguousarray(np.swapaxes(C_star, 1, 2)))
        self.ops = backend.kernels
        # mean_t W*_t: one GEMM of width T·k, done once
        self.mean_target = self.ops.shared_plus_gram(self.base, self.B_rows, self.C_rows, 1.0 / T)
        self._target_gram = None

    def targets(self):
        """Dense W*_t (T, d_out, d_in) — only for paths that cannot use the structure."""
        return self.base[None] + self.B_rows.swapaxes(1, 2) @ self.C_rows

    def negative_gradient(self, point: Iterate):
        """W*_t − A, dense (for the exact adapter fit of small problems)."""
        return self.targets() - point.A

    def losses_W(self, W):
        return 0.5 * batched_frobenius_sq(W - self.targets())

    def grad_W(self, W):
        return W - self.targets()

    def standard_solution(self):
        return self.mean_target.copy()[None]

    def residual_spreads(self, A=None):
        """√(mean_t ‖S + B*_tC*_tᵀ − A‖²_F) (one problem; A None: the mean target), host (1,): one task's
        d_out × d_in residual at a time, never the T targets together."""
        shift = self.base - (self.mean_target if A is None else A[0])
        total = 0.0
        for t in range(self.T):
            total += float(self.xp.linalg.norm(shift + self.B_rows[t].T @ self.C_rows[t])) ** 2
        return np.array([np.sqrt(total / self.T)])

    def null_objective(self):
        """Σ_t ½‖S + B*_tC*_tᵀ‖² in closed form (no dense targets), plus ½T‖S_full‖² for a reduction."""
        S, M = self.base, self.mean_target
        value = np.array([0.5 * (self.T * frobenius_sq(S) + 2 * self.T * float(self.xp.sum(S * (M - S)))
                                 + float(self.xp.sum(self.target_gram())))])
        return value if self.full_base_sq is None else value + 0.5 * self.T * self.full_base_sq

    def target_gram(self):
        """Per task ‖B*_t C*_tᵀ‖²_F (T,)."""
        if self._target_gram is None:
            self._target_gram = self.ops.gram_inner(self.B_rows, self.C_rows, self.B_rows, self.C_rows)
        return self._target_gram

    def perturbation_error(self, adapters, accurate: bool = True):
        """Per task ‖B*_t C*_tᵀ − Δ_t‖²_F (T,), O(T·d·r²).

        ``accurate``: by a QR of [C*_t, C_t], with rounding error proportional to the
        difference itself (what a line search needs near the optimum).  Otherwise from r×r
        Gram matrices — cheaper, but with an error floor of ~eps·‖B*C*ᵀ‖² per task.
        """
        B, C = adapters.B, adapters.C
        if accurate:
            return self.ops.lowrank_diff_sq(self.B_rows, self.C_rows, B, C)
        own = self.ops.gram_inner(B, C, B, C)
        return self.target_gram() - 2 * self.ops.gram_inner(self.B_rows, self.C_rows, B, C) + own

    # -- the interface, in factor form --------------------------------------------------------
    def losses(self, A, adapters=None):
        """½‖D + B*_tC*_tᵀ − Δ_t‖² per task, D = S − A, from products of D with the factor rows."""
        if adapters is None or not adapters.factored:
            return super().losses(A, adapters)
        D = self.base - A[0]
        cross = _pairings(D, self.B_rows, self.C_rows) - _pairings(D, adapters.B, adapters.C)
        return 0.5 * (frobenius_sq(D) + 2 * cross + self.perturbation_error(adapters))

    def objective(self, A, adapters=None, sum_delta=None):
        """Σ_t ½‖D + B*_tC*_tᵀ − Δ_t‖², D = S − A, for any A: O(d² + T·d·r²) given Σ_t Δ_t."""
        if adapters is None or not adapters.factored:
            return super().objective(A, adapters)
        if sum_delta is None:
            sum_delta = adapters.sums.get("gram")
            if sum_delta is None:
                sum_delta = adapters.sums["gram"] = self.ops.gram_sum(adapters.B, adapters.C)
        D = self.base - A[0]
        cross = 2 * float(self.xp.sum(D * (self.T * (self.mean_target - self.base) - sum_delta)))
        return np.array([0.5 * (self.T * frobenius_sq(D) + cross
                                + float(self.xp.sum(self.perturbation_error(adapters))))])

    def gradient(self, A, adapters=None, implicit: bool = False):
        """With factor adapters and ``implicit``: G_t = (A − S) + [B_t; −B*_t]ᵀ[C_t; C*_t] as an
        implicit batch — no dense (T, d_out, d_in) array."""
        if adapters is None or not adapters.factored or not implicit:
            return super().gradient(A, adapters)
        xp = self.xp
        return SharedPlusLowRank(A[0] - self.base, xp.concatenate([adapters.B, -self.B_rows], axis=1),
                                 xp.concatenate([adapters.C, self.C_rows], axis=1), self.ops)

    def value_and_gradient(self, A, adapters=None, implicit: bool = False):
        """As :meth:`gradient`, with ∇_A F = T(A − M) + Σ_t Δ_t from one GEMM of width T·r."""
        if adapters is None or not adapters.factored or not implicit:
            return super().value_and_gradient(A, adapters)
        sum_delta = adapters.sums.get("gram")
        if sum_delta is None:
            sum_delta = self.ops.gram_sum(adapters.B, adapters.C)
        value = self.objective(A, adapters, sum_delta)
        return value, (self.T * (A[0] - self.mean_target) + sum_delta)[None], self.gradient(A, adapters, implicit)

    def minimizing_A(self, adapters):
        """A = M − (1/T) Σ_t Δ_t, without the ALS bookkeeping of :meth:`a_step`; the Gram Σ_t B_tᵀC_t
        stays in ``adapters.sums`` for the objective and gradient at these adapters."""
        if adapters is None:
            return self.standard_solution()
        if not adapters.factored:
            return (self.mean_target - self.xp.mean(adapters.dense, axis=0))[None]
        gram = adapters.sums.get("gram")
        if gram is None:
            gram = adapters.sums["gram"] = self.ops.gram_sum(adapters.B, adapters.C)
        return (self.mean_target + (-1.0 / self.T) * gram)[None]

    def _shared(self, A, D, norms, symmetric) -> SharedResidual:
        A = A[None] if A.ndim == 2 else A
        A_sq = np.array([norms.A_sq]) if self.full_base_sq is None else self.full_sq(A)
        return SharedResidual(A, np.array([norms.step_sq]), A_sq, D=D, symmetric=symmetric, norms=norms)

    def residual(self, A, previous: Iterate | None = None, symmetric: bool = False) -> SharedResidual:
        D, norms = self.ops.residual_stats(self.base, A[0], (A if previous is None else previous.A)[0], symmetric)
        return self._shared(A, D, norms, symmetric)

    def a_step(self, adapters, previous: SharedResidual | None = None, symmetric: bool = False) -> SharedResidual:
        """A = M − (1/T) Σ_t B_tᵀC_t and its residual, in one pass on fast backends.

        The previous residual's memory is reused for the new one: ``previous.D`` is released
        (set to None), so a stale residual cannot be read by mistake.
        """
        if adapters is None:
            return self.residual(self.standard_solution(), previous, symmetric)
        if not adapters.factored:
            return self.residual((self.mean_target - self.xp.mean(adapters.dense, axis=0))[None], previous, symmetric)
        old_A = self.mean_target if previous is None else previous.A[0]
        out = None if previous is None else previous.D
        # S − A is exactly symmetric when S is, the targets are and the adapters are (B is C): the
        # A step then adds exactly symmetric Gram sums, and the symmetrising pass can be skipped
        symmetrize = symmetric and not (self.symmetric and self.base_symmetric and adapters.B is adapters.C)
        # Σ_t Δ_t from the objective at these adapters (an accepted extrapolation) is reused; the
        # kernel may overwrite it, so it leaves the cache
        A, D, norms = self.ops.shared_update_stats(self.mean_target, adapters.B, adapters.C, -1.0 / self.T, self.base,
                                                   old_A, symmetrize, out=out, gram=adapters.sums.pop("gram", None))
        if previous is not None:
            previous.D = None
        return self._shared(A, D, norms, symmetric)

    def objective_after_a_step(self, point: Iterate, adapters):
        """½[Σ_t ‖B*C*ᵀ − Δ_t‖² − T‖S − A‖²] when A is the A step of these adapters: O(T·d·r²).

        Where the optimum has A ≠ S (T ≤ 2) the terms cancel, and the Gram form has a rounding
        floor of ~eps·Σ_t‖B*C*ᵀ‖²: the value is not accurate near zero (second element False).
        """
        if not adapters.factored or not isinstance(point, SharedResidual):
            return super().objective_after_a_step(point, adapters)
        value = 0.5 * (float(self.xp.sum(self.perturbation_error(adapters, accurate=False)))
                       - self.T * point.norms.distance_sq)
        return np.array([value]), False
