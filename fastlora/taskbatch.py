"""All tasks of one solve, batched on a backend: the objective Σ_t L_t and its pieces.

Three kinds, chosen from the tasks (docs/design.md §2, §5):

* ``FactoredPopulation`` — W*_t = S + B*_t C*_tᵀ with one shared S: memory O(d² + T·d·k).
* ``DensePopulation``    — W*_t dense, (T, d_out, d_in).
* ``FiniteSample``       — sufficient statistics Σ_t (T, d_in, d_in), YᵀX/n (T, d_out, d_in), s_t.

Every kind offers one interface, on the adapters' updates Δ_t given as :class:`Adapters`
(factor rows or dense; ``None`` means Δ = 0):

=====================================  ===========================================================
``losses(A, adapters)``                per-task L_t(A + Δ_t), shape (T,)
``objective(A, adapters)``             Σ_t L_t(A + Δ_t), accurate to rounding of the differences
``value_and_gradient(A, adapters)``    (F, ∇_A F, G) with G_t = ∇L_t(A + Δ_t): dense (T, d_out, d_in),
                                       or implicit (:class:`~fastlora.linop.SharedPlusLowRank`)
``residual(A)``                        the model at A as an :class:`Iterate` — what adapter steps fit
``a_step(adapters, previous)``         argmin_A Σ_t L_t(A + Δ_t), as the next :class:`Iterate`
``objective_after_a_step(point, ad)``  F at an A-step point, by the cheapest identity, and whether
                                       that value is accurate near zero
``standard_solution()``                argmin_A Σ_t L_t(A)
=====================================  ===========================================================

The ALS, gradient and Reptile solvers, and the adapter steps, use only this interface.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .arrays import array_module, batched_frobenius_sq, frobenius_sq
from .errors import FastLoRAError
from .kernels import ResidualNorms
from .linop import SharedPlusLowRank
from .tasks import PINV_RTOL as _PINV_RTOL
from .tasks import LowRankTarget, Task, dense_target, least_squares_fits


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Adapters:
    """Every task's update Δ_t: factor rows ``B`` (T, r, d_out), ``C`` (T, r, d_in) with
    Δ_t = B_tᵀ C_t (``B is C`` for symmetric updates), or ``dense`` (T, d_out, d_in).
    ``sums`` holds Σ_t Δ_t once a batch has formed it (the objective does), for the next A
    step of these same adapters to reuse."""

    B: Any = None
    C: Any = None
    dense: Any = None
    sums: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_params(cls, peft, params, delta, factored: bool = True) -> Adapters:
        """The updates of ``params``: factor rows when ``factored`` and ``peft.factors`` exists,
        else ``delta(params)`` (``delta`` is the backend's, with any base bound)."""
        factors = getattr(peft, "factors", None)
        if factored and callable(factors) and not getattr(peft, "uses_base", False):
            B, C = factors(params)
            rows_B = B.swapaxes(1, 2)
            return cls(B=rows_B, C=rows_B if C is B else C.swapaxes(1, 2))
        return cls(dense=delta(params))

    @property
    def factored(self) -> bool:
        return self.B is not None

    def to_dense(self):
        return self.dense if self.dense is not None else self.B.swapaxes(1, 2) @ self.C


@dataclass(eq=False)
class Iterate:
    """The shared models at one A per problem, with what adapter steps read from them
    (subclasses add the kind's residual).  ``A`` (P, d_out, d_in); ``step_sq`` (P,) =
    ‖A − A_previous‖²_F (0 at a start) and ``A_sq`` (P,) = ‖A‖²_F, host float64 arrays."""

    A: Any
    step_sq: Any = None
    A_sq: Any = None

    @property
    def relative_change(self):
        """‖A − A_previous‖ / ‖A‖ per problem (absolute where A = 0), shape (P,)."""
        safe = np.where(self.A_sq > 0, self.A_sq, 1.0)
        return np.where(self.A_sq > 0, np.sqrt(self.step_sq / safe), np.sqrt(self.step_sq))


@dataclass(eq=False)
class SharedResidual(Iterate):
    """Factored population (P = 1): D = S − A (d_out, d_in), symmetrised when ``symmetric``
    (what the PSD fit needs), with ``norms`` (:class:`~fastlora.kernels.ResidualNorms`) from
    the same pass."""

    D: Any = None
    symmetric: bool = False
    norms: ResidualNorms | None = None


@dataclass(eq=False)
class TaskResidual(Iterate):
    """A point of a dense or finite-sample batch, with −∇L_t(A) at Δ = 0 for every task (P·T,
    d_out, d_in) formed on first use (:meth:`Batch.negative_gradient_at`)."""

    batch: Any = None
    _negative_gradient: Any = None

    @property
    def negative_gradient(self):
        if self._negative_gradient is None:
            self._negative_gradient = self.batch.negative_gradient_at(self.A)
        return self._negative_gradient


def _pairings(D, B, C):
    """Per task ⟨D, B_tᵀC_t⟩_F = Σ_l B_t[l]·(D C_t[l]) for rows B (T, r, d_out), C (T, r, d_in): one GEMM."""
    xp = array_module(D)
    T, r, d_in = C.shape
    DC = (xp.ascontiguousarray(C).reshape(T * r, d_in) @ D.T).reshape(T, r, -1)
    return xp.sum((DC * B).reshape(T, -1), axis=1)


# ---------------------------------------------------------------------------------------------
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


class FiniteSample(Batch):
    """Σ_t = XᵀX/n (P·T, d_in, d_in), ``cross`` = YᵀX/n (P·T, d_out, d_in), s_t = ‖Y‖²/2n (P·T,)."""

    kind = "finite"
    is_population = False

    def __init__(self, backend, dtype, Sigma, cross, s, n, P: int = 1, fits=None):
        super().__init__(backend, dtype, P, cross.shape[0] // P, cross.shape[1], cross.shape[2])

        def cast(a):
            return backend.asarray(a, dtype)

        self.Sigma, self.cross, self.s = cast(Sigma), cast(cross), cast(s)
        self.n = np.asarray(n)
        W_hat, floor, lam, V = fits
        self._least_squares = (cast(W_hat), cast(floor))
        self._spectrum = (cast(lam), cast(V))
        self._whiteners = None
        self._gram_solver = None

    def least_squares(self):
        """(Ŵ_t = C_t Σ_t⁺, L_t(Ŵ_t)) of every task (fastlora.tasks.least_squares_fits): the stable
        form of the loss, L_t(W) = ½⟨(W − Ŵ_t)Σ_t, W − Ŵ_t⟩ + L_t(Ŵ_t)."""
        return self._least_squares

    def losses_W(self, W):
        W_hat, floor = self.least_squares()
        E = W - W_hat
        return self._losses(E, E @ self.Sigma, floor)

    def _losses(self, E, ES, floor):
        return 0.5 * self.xp.sum((ES * E).reshape(E.shape[0], -1), axis=1) + floor

    def grad_W(self, W):
        return W @ self.Sigma - self.cross

    def value_and_gradient(self, A, adapters=None, implicit: bool = False):
        W_hat, floor = self.least_squares()
        E = self._W(A, adapters) - W_hat
        ES = E @ self.Sigma  # = WΣ − C, the gradient
        return self.host(self.sum_tasks(self._losses(E, ES, floor))), self.sum_tasks(ES), ES

    def sigma_pinv_half(self):
        """Σ_t^{+1/2} and Σ_t^+ (pseudo-inverses on the range of Σ_t), computed once."""
        if self._whiteners is None:
            xp = self.xp
            lam, V = self._spectrum
            cut = _PINV_RTOL * xp.maximum(lam[:, -1:], xp.finfo(lam.dtype).tiny)
            keep = lam > cut
            inv_sqrt = xp.where(keep, 1.0 / xp.sqrt(xp.where(keep, lam, 1.0)), 0.0)
            half = (V * inv_sqrt[:, None, :]) @ V.swapaxes(1, 2)
            full = (V * (inv_sqrt ** 2)[:, None, :]) @ V.swapaxes(1, 2)
            self._whiteners = (half, full)
        return self._whiteners

    def negative_gradient_at(self, A):
        """G_t = YᵀX/n − AΣ_t."""
        return self.cross - self.per_task(A) @ self.Sigma

    def a_step(self, adapters, previous: Iterate | None = None, symmetric: bool = False) -> TaskResidual:
        """Solve A (Σ_t Σ_t) = Σ_t (C_t − Δ_t Σ_t) per problem (minimum-norm where Σ_t Σ_t is
        singular); with factor adapters Δ_tΣ_t = B_tᵀ(C_tΣ_t), never forming Δ_t."""
        return self.residual(self.minimizing_A(adapters), previous)

    def minimizing_A(self, adapters):
        rhs = self.cross
        if adapters is not None and adapters.factored:
            rhs = rhs - adapters.B.swapaxes(1, 2) @ (adapters.C @ self.Sigma)
        elif adapters is not None:
            rhs = rhs - adapters.dense @ self.Sigma
        return self.sum_tasks(rhs) @ self._gram_pinv()

    def _gram_pinv(self):
        """(Σ_t Σ_t)⁺ per problem (P, d_in, d_in)."""
        if self._gram_solver is None:
            xp = self.xp
            lam, V = xp.linalg.eigh(self.sum_tasks(self.Sigma))
            cut = _PINV_RTOL * xp.maximum(lam[:, -1:], xp.finfo(lam.dtype).tiny)
            keep = lam > cut
            inv = xp.where(keep, 1.0 / xp.where(keep, lam, 1.0), 0.0)
            self._gram_solver = (V * inv[:, None, :]) @ V.swapaxes(1, 2)
        return self._gram_solver

    def standard_solution(self):
        return self.a_step(None).A

    def null_objective(self):
        return self.host(self.sum_tasks(self.s))


def as_task_list(problem_or_tasks) -> list[Task]:
    tasks = getattr(problem_or_tasks, "tasks", problem_or_tasks)
    if isinstance(tasks, Task):
        tasks = [tasks]
    try:
        tasks = tasks if isinstance(tasks, list) else list(tasks)
    except TypeError:
        raise FastLoRAError("tasks must be a Problem, a Task or a list of Tasks") from None
    if len(tasks) < 1:
        raise FastLoRAError("T must be >= 1: got an empty list of tasks")
    for i, t in enumerate(tasks):
        if not isinstance(t, Task):
            raise FastLoRAError(f"tasks[{i}] is a {type(t).__name__}, not a fastlora.Task")
    shapes = {(t.d_out, t.d_in) for t in tasks}
    if len(shapes) > 1:
        raise FastLoRAError(f"all tasks must have the same (d_out, d_in); got {sorted(shapes)}")
    modes = {t.is_population for t in tasks}
    if len(modes) > 1:
        raise FastLoRAError("tasks mix population and finite-sample modes; use one mode per solve")
    return tasks


# Problems up to this size are batched densely (their factored targets materialised): a
# full eigen/singular decomposition per task is then cheaper than the many more iterations
# of subspace ALS it saves (and makes Anderson extrapolation possible), and same-shape
# problems can be stacked on a leading problem axis.  Above it, the factored structure wins.
DENSE_MAX_DIM = 32


def is_small(d_out: int, d_in: int) -> bool:
    return max(d_out, d_in) <= DENSE_MAX_DIM


FACTORED_CHOICES = ("auto", "always")


def batch_kind(tasks: list[Task], *, factored: str = "auto", source=None) -> str:
    """The kind :func:`make_batch` builds for ``tasks``: "factored", "dense" or "finite".

    Population targets sharing one base stay ``factored`` (W*_t = S + B*_tC*_tᵀ kept as factors)
    where the problem is larger than ``DENSE_MAX_DIM`` (``factored="auto"``) or whatever its size
    (``"always"``, which the subspace adapter step needs); otherwise they are materialised (dense).
    """
    if not tasks[0].is_population:
        return "finite"
    if factored != "always" and is_small(tasks[0].d_out, tasks[0].d_in):
        return "dense"
    return "factored" if _from_problem(tasks, source) or shares_one_base(tasks) else "dense"


def shares_one_base(tasks) -> bool:
    """Whether every task's target is a LowRankTarget S + B*_t C*_tᵀ with one base S."""
    targets = [t.target for t in tasks]
    return all(isinstance(g, LowRankTarget) for g in targets) \
        and all(g.base is targets[0].base or np.array_equal(g.base, targets[0].base) for g in targets)


def factored_targets(tasks, source=None):
    """(S, B* (T, d_out, k), C* (T, d_in, k), symmetric) of population targets sharing one base
    (factors of unequal rank zero-padded to the largest), else None; a Problem's own batched
    factors (``source``) are used as they are."""
    if not tasks[0].is_population:
        return None
    if _from_problem(tasks, source):
        return source.A_star, source.B_star, source.C_star, source.symmetric
    if not shares_one_base(tasks):
        return None
    targets = [t.target for t in tasks]
    k = max(g.B.shape[1] for g in targets)
    symmetric = all(g.symmetric for g in targets)
    B = np.stack([_pad(g.B, k) for g in targets])
    C = B if symmetric else np.stack([_pad(g.C, k) for g in targets])
    return targets[0].base, B, C, symmetric


def _from_problem(tasks, source) -> bool:
    return source is not None and getattr(source, "n", 0) is None and getattr(source, "tasks", None) is tasks \
        and hasattr(source, "B_star")


def make_batch(tasks: list[Task], backend, dtype, *, factored: str = "auto", source=None) -> Batch:
    """Batch one problem's ``tasks`` on ``backend``; large factored targets sharing one base
    stay factored (``factored``: as in :func:`batch_kind`).

    ``source``: the Problem the tasks came from, if any; its batched factors are then used
    as they are (no copy on CPU backends in float64).
    """
    kind = batch_kind(tasks, factored=factored, source=source)
    if kind != "factored":
        return stack_problems([tasks], backend, dtype, kind)
    return FactoredPopulation(backend, dtype, *factored_targets(tasks, source))


def stack_problems(problems: list[list[Task]], backend, dtype, kind: str) -> Batch:
    """P problems of the same shape and T as one batch of kind "dense" or "finite" (problem-major)."""
    tasks = [t for problem in problems for t in problem]
    P = len(problems)
    if kind == "finite":
        return FiniteSample(backend, dtype, np.stack([t.Sigma for t in tasks]), np.stack([t.C for t in tasks]),
                            np.array([t.s for t in tasks]), [t.n for t in tasks], P=P, fits=least_squares_fits(tasks))
    return DensePopulation(backend, dtype, np.stack([dense_target(t.target) for t in tasks]), P=P)


def _pad(F, k):
    return F if F.shape[1] == k else np.concatenate([F, np.zeros((F.shape[0], k - F.shape[1]))], axis=1)
