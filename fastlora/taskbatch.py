"""All tasks of one solve, batched on a backend: the objective Σ_t L_t and its pieces.

Three kinds, chosen from the tasks (DESIGN.md §2, §5):

* ``FactoredPopulation`` — W*_t = S + B*_t C*_tᵀ with one shared S: memory O(d² + T·d·k).
* ``DensePopulation``    — W*_t dense, (T, d_out, d_in).
* ``FiniteSample``       — sufficient statistics Σ_t (T, d_in, d_in), C_t (T, d_out, d_in), s_t.

Each offers the same small interface on dense adapter updates ``delta`` (T, d_out, d_in):
``losses``, ``grad``, ``a_step`` (argmin_A Σ_t L_t(A + Δ_t)), ``standard_solution``; the
factored kind adds the factor-form operations of the fast solvers.
"""
from __future__ import annotations

import numpy as np

from .arrays import batched_frobenius_sq
from .errors import FastLoRAError
from .linop import SharedPlusLowRank
from .tasks import LowRankTarget, Task, dense_target

_PINV_RTOL = 1e-12  # eigenvalues of Σ below this fraction of the largest are treated as 0


class Batch:
    kind = "abstract"
    is_population = True

    def __init__(self, backend, dtype, T, d_out, d_in):
        self.backend, self.xp, self.dtype = backend, backend.xp, dtype
        self.T, self.d_out, self.d_in = T, d_out, d_in

    def objective(self, A, delta=None) -> float:
        return float(self.xp.sum(self.losses(A, delta)))

    def losses(self, A, delta=None):
        """Per-task L_t(A + Δ_t) (T,)."""
        return self.losses_W(self._W(A, delta))

    def grad(self, A, delta=None):
        """Per-task ∇L_t at W_t = A + Δ_t (T, d_out, d_in)."""
        return self.grad_W(self._W(A, delta))

    def losses_and_grad(self, A, delta=None):
        W = self._W(A, delta)
        return self.losses_W(W), self.grad_W(W)

    def null_objective(self) -> float:
        """Σ_t L_t(0): the scale against which 'objective ≈ 0' is judged."""
        return self.objective(self.xp.zeros((self.d_out, self.d_in), self.dtype))

    def _W(self, A, delta):
        return A[None] if delta is None else A[None] + delta


class DensePopulation(Batch):
    kind = "dense"

    def __init__(self, backend, dtype, W_star):
        super().__init__(backend, dtype, *W_star.shape)
        self.W_star = backend.asarray(W_star, dtype)

    def targets(self):
        return self.W_star

    def losses_W(self, W):
        return 0.5 * batched_frobenius_sq(W - self.W_star)

    def grad_W(self, W):
        return W - self.W_star

    def losses_and_grad(self, A, delta=None):
        R = self._W(A, delta) - self.W_star
        return 0.5 * batched_frobenius_sq(R), R

    def a_step(self, delta=None):
        R = self.W_star if delta is None else self.W_star - delta
        return self.xp.mean(R, axis=0)

    def standard_solution(self):
        return self.a_step(None)


class FactoredPopulation(Batch):
    """W*_t = S + B*_t C*_tᵀ; factors kept as (T, k, d) rows for the shared GEMMs."""

    kind = "factored"

    def __init__(self, backend, dtype, S, B_star, C_star, symmetric: bool):
        T, d_out, _ = B_star.shape
        super().__init__(backend, dtype, T, d_out, S.shape[1])
        xp, cast = self.xp, (lambda a: backend.asarray(a, dtype))
        self.symmetric = symmetric
        self.S = cast(S)
        self.Bs = cast(np.ascontiguousarray(np.swapaxes(B_star, 1, 2)))   # (T, k, d_out), free if already rows
        self.Cs = self.Bs if symmetric else cast(np.ascontiguousarray(np.swapaxes(C_star, 1, 2)))  # (T, k, d_in)
        k = self.Bs.shape[1]
        # M = mean_t W*_t: one GEMM of width T·k, done once.
        self.M = self.S + (self.Bs.reshape(T * k, d_out).T @ self.Cs.reshape(T * k, self.d_in)) / T
        self._target_gram = None

    def targets(self):
        """Dense W*_t (T, d_out, d_in) — only for paths that cannot use the structure."""
        return self.S[None] + self.Bs.swapaxes(1, 2) @ self.Cs

    def losses_W(self, W):
        return 0.5 * batched_frobenius_sq(W - self.targets())

    def grad_W(self, W):
        return W - self.targets()

    def a_step(self, delta=None):
        return self.M if delta is None else self.M - self.xp.mean(delta, axis=0)

    def standard_solution(self):
        return self.M.copy()

    def null_objective(self) -> float:
        xp = self.xp
        target_sq = self.T * xp.sum(self.S * self.S) + 2 * self.T * xp.sum(self.S * (self.M - self.S)) \
            + xp.sum(self.target_gram())
        return 0.5 * float(target_sq)

    # -- factor-form operations (rows: B (T, r, d_out), C (T, r, d_in); Δ_t = B_tᵀ C_t) ----
    def target_gram(self):
        """Per task ‖B*_t C*_tᵀ‖²_F (T,)."""
        if self._target_gram is None:
            k = self.backend.kernels
            self._target_gram = k.gram_inner(self.Bs, self.Cs, self.Bs, self.Cs)
        return self._target_gram

    def perturbation_error(self, B, C, accurate: bool = True):
        """Per task ‖B*_t C*_tᵀ − Δ_t‖²_F (T,), O(T·d·r²).

        ``accurate``: by a QR of [C*_t, C_t], with rounding error proportional to the
        difference itself (what a line search needs near the optimum).  Otherwise from r×r
        Gram matrices — cheaper, but with an error floor of ~eps·‖B*C*ᵀ‖² per task.
        """
        k = self.backend.kernels
        if accurate:
            return k.lowrank_diff_sq(self.Bs, self.Cs, B, C)
        own = k.gram_inner(B, C, B, C)
        return self.target_gram() - 2 * k.gram_inner(self.Bs, self.Cs, B, C) + own

    def a_step_factors_with_stats(self, B, C, A_old, symmetrize: bool, out=None):
        """(A, D, stats): the A step A = M − (1/T) Σ_t B_tᵀ C_t plus the residual D = S − A (symmetrised if
        asked) and [‖D‖², ‖S − A‖², ‖A − A_old‖², ‖A‖²], in one pass on fast backends.
        ``out``: a (d_out, d_in) buffer for D that may be overwritten."""
        return self.backend.kernels.shared_update_stats(self.M, B, C, -1.0 / self.T, self.S, A_old, symmetrize,
                                                        out=out)

    def objective_after_a_step(self, B, C, dist_sq: float, accurate: bool = False) -> float:
        """Σ_t L_t(A + Δ_t) when A is the A step of (B, C): ½[Σ_t ‖B*C*ᵀ − Δ_t‖² − T‖S − A‖²].

        ``dist_sq`` = ‖S − A‖².  O(T·d·r²).  Where the optimum has A ≠ S (T ≤ 2) the terms
        cancel, and with ``accurate=False`` the Gram floor applies: the value is then
        accurate to ~eps·Σ_t‖B*C*ᵀ‖² only (it is floored at 0 by the monitor).
        """
        return 0.5 * (float(self.xp.sum(self.perturbation_error(B, C, accurate))) - self.T * dist_sq)

    def objective_factors(self, A, B, C, sum_delta=None) -> float:
        """Σ_t ½‖D + B*_tC*_tᵀ − Δ_t‖², D = S − A, for any A; O(d² + T·d·r²) given Σ_t Δ_t."""
        xp = self.xp
        if sum_delta is None:
            sum_delta = self.backend.kernels.shared_plus_gram(xp.zeros_like(A), B, C, 1.0)
        D = self.S - A
        cross = 2 * float(xp.sum(D * (self.T * (self.M - self.S) - sum_delta)))
        return 0.5 * (self.T * float(xp.sum(D * D)) + cross + float(xp.sum(self.perturbation_error(B, C))))

    def implicit_grad(self, A, B, C):
        """G_t = A + Δ_t − W*_t = (A − S) + [B_t, −B*_t][C_t, C*_t]ᵀ as an implicit batch (rows B, C)."""
        xp = self.xp
        P = xp.concatenate([B, -self.Bs], axis=1)
        Q = xp.concatenate([C, self.Cs], axis=1)
        return SharedPlusLowRank(A - self.S, P, Q, self.backend.kernels)


class FiniteSample(Batch):
    kind = "finite"
    is_population = False

    def __init__(self, backend, dtype, Sigma, C, s, n):
        super().__init__(backend, dtype, C.shape[0], C.shape[1], C.shape[2])
        cast = (lambda a: backend.asarray(a, dtype))
        self.Sigma, self.C, self.s = cast(Sigma), cast(C), cast(s)
        self.n = np.asarray(n)
        self._whiteners = None
        self._gram_solver = None
        self._least_squares = None

    def least_squares(self):
        """(Ŵ_t = C_t Σ_t⁺, L_t(Ŵ_t)), computed once.

        L_t(W) = ½⟨(W − Ŵ_t)Σ_t, W − Ŵ_t⟩ + L_t(Ŵ_t) holds exactly (C_t's rows lie in the range
        of Σ_t); unlike ½tr(WΣWᵀ) − tr(WCᵀ) + s, whose terms are of size s_t, it has no
        cancellation, so losses near the optimum compare to full precision.
        """
        if self._least_squares is None:
            xp = self.xp
            W_hat = self.C @ self.sigma_pinv_half()[1]
            fit = 0.5 * xp.sum(((W_hat @ self.Sigma) * W_hat).reshape(self.T, -1), axis=1)
            self._least_squares = (W_hat, xp.maximum(self.s - fit, 0.0))
        return self._least_squares

    def losses_W(self, W):
        W_hat, floor = self.least_squares()
        E = W - W_hat
        return self._losses(E, E @ self.Sigma, floor)

    def _losses(self, E, ES, floor):
        return 0.5 * self.xp.sum((ES * E).reshape(self.T, -1), axis=1) + floor

    def grad_W(self, W):
        return W @ self.Sigma - self.C

    def losses_and_grad(self, A, delta=None):
        W_hat, floor = self.least_squares()
        E = self._W(A, delta) - W_hat
        ES = E @ self.Sigma  # = WΣ − C, the gradient
        return self._losses(E, ES, floor), ES

    def sigma_pinv_half(self):
        """Σ_t^{+1/2} and Σ_t^+ (pseudo-inverses on the range of Σ_t), computed once."""
        if self._whiteners is None:
            xp = self.xp
            lam, V = xp.linalg.eigh(self.Sigma)
            cut = _PINV_RTOL * xp.maximum(lam[:, -1:], xp.finfo(lam.dtype).tiny)
            keep = lam > cut
            inv_sqrt = xp.where(keep, 1.0 / xp.sqrt(xp.where(keep, lam, 1.0)), 0.0)
            half = (V * inv_sqrt[:, None, :]) @ V.swapaxes(1, 2)
            full = (V * (inv_sqrt ** 2)[:, None, :]) @ V.swapaxes(1, 2)
            self._whiteners = (half, full)
        return self._whiteners

    def a_step(self, delta=None):
        """Solve A (Σ_t Σ_t) = Σ_t (C_t − Δ_t Σ_t) (minimum-norm where Σ_t Σ_t is singular)."""
        xp = self.xp
        rhs = xp.sum(self.C, axis=0)
        if delta is not None:
            rhs = rhs - xp.sum(delta @ self.Sigma, axis=0)
        return rhs @ self._gram_pinv()

    def a_step_factors(self, B, C):
        """As :meth:`a_step` with Δ_t = B_tᵀ C_t (rows), never forming Δ_t."""
        xp = self.xp
        rhs = xp.sum(self.C, axis=0) - xp.einsum("trm,trn->mn", B, C @ self.Sigma)
        return rhs @ self._gram_pinv()

    def _gram_pinv(self):
        if self._gram_solver is None:
            xp = self.xp
            total = xp.sum(self.Sigma, axis=0)
            lam, V = xp.linalg.eigh(total)
            cut = _PINV_RTOL * max(float(lam[-1]), float(xp.finfo(lam.dtype).tiny))
            inv = xp.where(lam > cut, 1.0 / xp.where(lam > cut, lam, 1.0), 0.0)
            self._gram_solver = (V * inv[None, :]) @ V.T
        return self._gram_solver

    def standard_solution(self):
        return self.a_step(None)

    def null_objective(self) -> float:
        return float(self.xp.sum(self.s))


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


def make_batch(tasks: list[Task], backend, dtype, *, structured: bool = True, source=None) -> Batch:
    """Batch ``tasks`` on ``backend``; factored targets sharing one base stay factored.

    ``source``: the Problem the tasks came from, if any; its batched factors are then used
    as they are (no copy on CPU backends in float64).
    """
    if structured and source is not None and getattr(source, "n", 0) is None \
            and getattr(source, "tasks", None) is tasks and hasattr(source, "B_star"):
        return FactoredPopulation(backend, dtype, source.A_star, source.B_star, source.C_star, source.symmetric)
    if not tasks[0].is_population:
        return FiniteSample(backend, dtype, np.stack([t.Sigma for t in tasks]), np.stack([t.C for t in tasks]),
                            np.array([t.s for t in tasks]), [t.n for t in tasks])
    targets = [t.target for t in tasks]
    if structured and all(isinstance(g, LowRankTarget) for g in targets) \
            and all(g.base is targets[0].base or np.array_equal(g.base, targets[0].base) for g in targets):
        k = max(g.B.shape[1] for g in targets)
        symmetric = all(g.symmetric for g in targets)
        B = np.stack([_pad(g.B, k) for g in targets])
        C = B if symmetric else np.stack([_pad(g.C, k) for g in targets])
        return FactoredPopulation(backend, dtype, targets[0].base, B, C, symmetric)
    return DensePopulation(backend, dtype, np.stack([dense_target(g) for g in targets]))


def _pad(F, k):
    return F if F.shape[1] == k else np.concatenate([F, np.zeros((F.shape[0], k - F.shape[1]))], axis=1)
