"""The interface every batch kind implements (:class:`Batch`; the table in :mod:`fastlora.taskbatch`)."""
from __future__ import annotations

import numpy as np

from ..arrays import batched_frobenius_sq
from .iterates import Iterate, TaskResidual


class Batch:
    """P problems of T tasks each (P = 1 for a single solve); per-task arrays have the leading
    axis P·T (problem-major), A is (P, d_out, d_in), per-problem values are host arrays (P,).
    Every per-problem result is computed by the same operations whatever P is, so a problem's
    numbers do not depend on the other problems solved with it.

    Each kind defines ``minimizing_A(adapters)`` — argmin_A F(A, Δ) per problem (P, d_out, d_in) —
    and ``a_step(adapters, previous, symmetric)``, the same A with the ALS bookkeeping (an Iterate)."""

    kind = "abstract"
    is_population = True

    def __init__(self, backend, dtype, P, T, d_out, d_in):
        self.backend, self.xp, self.dtype = backend, backend.xp, dtype
        self.P, self.T, self.d_out, self.d_in = P, T, d_out, d_in
        self.full_base_sq = None  # reduced problems: ‖S‖² (P,) of the full problems, see mark_reduction

    def mark_reduction(self, base_sq) -> None:
        """This batch is the reduction of a full problem (fastlora.reduction): its A stands for the
        full S + Q_out A Q_inᵀ.  The convergence test's scales — ‖A‖ and the null objective (the
        scale of "objective ≈ 0") — are taken as the full problem's without their cross terms
        with S (‖S‖² + ‖A‖² and Σ_t L_t(0) + ½T‖S‖²): the cross terms need Q_outᵀ S Q_in, a
        product as costly as the whole reduced solve, and a scale need not be exact."""
        self.full_base_sq = np.asarray(base_sq, dtype=np.float64)

    def full_sq(self, A):
        """‖A‖²_F per problem; where this batch is a reduction, the scale ‖S‖² + ‖A‖² of the full A."""
        if self.full_base_sq is None:
            return self.problem_sq(A)
        return self.problem_sq(A) + self.full_base_sq

    # -- layout helpers ---------------------------------------------------------------------
    def per_task(self, A):
        """A (P, d_out, d_in) repeated for each problem's T tasks: (P·T, d_out, d_in) (a view when P = 1)."""
        if self.P == 1:
            return self.xp.broadcast_to(A, (self.T, *A.shape[1:]))
        return self.xp.repeat(A, self.T, axis=0)

    def sum_tasks(self, X):
        """Σ over each problem's tasks of a per-task array (P·T, ...) -> (P, ...)."""
        return self.xp.sum(X.reshape(self.P, self.T, *X.shape[1:]), axis=1)

    def task_mask(self, problem_mask):
        """A per-problem boolean (P,) repeated per task (P·T,)."""
        return np.repeat(np.asarray(problem_mask, dtype=bool), self.T)

    def curvature_scales(self):
        """Each task's tr(Σ_t)/d_in, host (P·T,) (fastlora.engine.steps.curvature_scale): 1 here, Σ_t = I."""
        return np.ones(self.P * self.T)

    def _per_problem(self, X):
        """A per-task stack (P·T, ...) as (P, T, ...)."""
        return X.reshape(self.P, self.T, *X.shape[1:])

    def scalars_over(self, values, like):
        """Per-problem scalars ``values`` (P,) shaped to multiply ``like`` (leading axis P, or P·T per task),
        in like's dtype on the device; a float where P = 1 (shared parameters have no problem axis)."""
        values = np.asarray(values)
        if self.P == 1:
            return float(values.reshape(-1)[0])
        lead = like.shape[0]
        per = np.repeat(values, lead // self.P).reshape((lead,) + (1,) * (like.ndim - 1))
        return self.xp.asarray(per, dtype=like.dtype)

    def first_steps(self):
        """gd's first trial step of each problem, host (P,) (fastlora.engine.steps.first_step)."""
        from ..engine.steps import first_step
        scales = self.curvature_scales().reshape(self.P, self.T)
        return np.array([first_step(row) for row in scales])

    def host(self, values):
        """Per-problem values as a host float64 array."""
        return np.asarray(self.backend.to_numpy(values), dtype=np.float64).reshape(self.P)

    def problem_sq(self, X):
        """‖X_p‖²_F for X (P, ...) -> host (P,)."""
        return self.host(batched_frobenius_sq(X))

    # -- the dense interface (Δ_t as full matrices): every kind has it ----------------------
    def losses(self, A, adapters=None):
        """Per-task L_t(A + Δ_t), (P·T,)."""
        return self.losses_W(self._W(A, adapters))

    def objective(self, A, adapters=None):
        """Σ_t L_t(A + Δ_t) per problem, host (P,)."""
        return self.host(self.sum_tasks(self.losses(A, adapters)))

    def gradient(self, A, adapters=None, implicit: bool = False):
        """G_t = ∇L_t(A + Δ_t) for every task: dense (P·T, d_out, d_in), or implicit where the
        kind supports it and ``implicit`` (the parameterization accepts implicit gradients)."""
        return self.grad_W(self._W(A, adapters))

    def value_and_gradient(self, A, adapters=None, implicit: bool = False):
        """(F per problem (P,), ∇_A F = Σ_t G_t (P, d_out, d_in), G) with G as in :meth:`gradient`."""
        W = self._W(A, adapters)
        G = self.grad_W(W)
        return self.host(self.sum_tasks(self.losses_W(W))), self.sum_tasks(G), G

    def objective_after_a_step(self, point: Iterate, adapters):
        """(F(point.A, Δ) per problem, accurate): the objective at an A-step point."""
        return self.objective(point.A, adapters), True

    def null_objective(self):
        """Σ_t L_t(0) per problem (of the full problem where this is a reduction): the scale against
        which 'objective ≈ 0' is judged."""
        null = self.objective(self.xp.zeros((self.P, self.d_out, self.d_in), self.dtype))
        return null if self.full_base_sq is None else null + 0.5 * self.T * self.full_base_sq

    def residual(self, A, previous: Iterate | None = None, symmetric: bool = False) -> Iterate:
        """The point A with its ALS bookkeeping (step and scale norms)."""
        return TaskResidual(**self.point(A, previous, batch=self))

    def negative_gradient(self, point: Iterate):
        """−∇L_t at (point.A, Δ = 0) for every task, as cached on the point where it can be."""
        return point.negative_gradient

    def point(self, A, previous: Iterate | None = None, **fields) -> dict:
        return {"A": A, "step_sq": self.problem_sq(A - previous.A) if previous is not None else np.zeros(self.P),
                "A_sq": self.full_sq(A), **fields}

    def _W(self, A, adapters):
        W = self.per_task(A)
        return W if adapters is None else W + adapters.to_dense()
