"""Adapter steps: the per-task best response of the adapters to a fixed shared A.

    θ_t ← argmin_θ L_t(A + Δ(θ))        for every task t, batched

The ALS solver alternates one of these with the closed-form A step; :func:`fastlora.finetune`
runs one on a single task.  Which one is used (``adapter_step="auto"``):

===============  ==================================================================  ============
step             when                                                                exact?
===============  ==================================================================  ============
``subspace``     factored population targets, family "psd"/"general" (lora_sym,      converges to
                 lora): warm-started block subspace iteration + Rayleigh–Ritz,       the exact fit
                 one GEMM of width T·r with the shared part per iteration
``exact``        population targets and a ``best_fit`` (top-r eigen / truncated      yes
                 SVD of the dense residual W*_t − A)
``whitened``     finite samples, family "general" (reduced-rank regression:          yes
                 truncated SVD of (C_t − AΣ_t)Σ_t^{+1/2}, mapped back by Σ_t^{+1/2})
                 or "full" (least squares Δ = (C_t − AΣ_t)Σ_t^+)
``inner``        otherwise (e.g. lora_sym with Σ_t ≠ I, plugins without best_fit):   no: inner
                 ``inner_iter`` gradient steps on θ with per-task Armijo backtracking  iterations
===============  ==================================================================  ============
"""
from __future__ import annotations

import abc

from ..errors import FastLoRAError
from ..peft.protocol import bind_base, method
from .common import relative_change


class AdapterStep(abc.ABC):
    name = "abstract"
    exact = True
    warm_start = False  # whether fit() uses the previous parameters

    def __init__(self, ctx):
        self.ctx, self.batch, self.peft, self.rank = ctx, ctx.batch, ctx.peft, ctx.rank
        self.xp = ctx.xp
        self.delta_fn = method(ctx.peft, ctx.backend.name, "delta")

    @abc.abstractmethod
    def fit(self, A, params):
        """New adapter parameters for every task given A (``params``: the current ones or None)."""

    def a_step(self, params):
        return self.batch.a_step(self.delta_fn(params))

    def objective(self, A, params) -> float:
        return self.batch.objective(A, self.delta_fn(params))

    objective_is_accurate = True

    def final_objective(self, A, params) -> float:
        return self.objective(A, params)

    def objective_and_change(self, A_new, A_old, params):
        """(objective at A_new, ‖A_new − A_old‖ / ‖A_new‖)."""
        return self.objective(A_new, params), relative_change(self.xp, A_new, A_old)


class DenseExact(AdapterStep):
    """θ_t = best_fit(W*_t − A): the parameterization's exact Frobenius best fit."""

    name = "exact"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.best_fit = method(ctx.peft, ctx.backend.name, "best_fit")
        self.targets = self.batch.targets()

    def fit(self, A, params):
        return self.best_fit(self.targets - A[None], self.rank)

    def a_step(self, params):
        return self.xp.mean(self.targets - self.delta_fn(params), axis=0)

    def objective(self, A, params) -> float:
        R = self.targets - A[None] - self.delta_fn(params)
        return 0.5 * float(self.xp.sum(R * R))


class WhitenedFinite(AdapterStep):
    """Finite samples: min_Δ ½tr(ΔΣΔᵀ) − tr(ΔGᵀ), G = C − AΣ, solved exactly.

    family "general": Δ = [G Σ^{+1/2}]_r Σ^{+1/2} (reduced-rank regression);
    family "full":    Δ = G Σ^+.
    """

    name = "whitened"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.best_fit = method(ctx.peft, ctx.backend.name, "best_fit")
        self.general = ctx.peft.family == "general"

    def fit(self, A, params):
        b = self.batch
        G = b.C - A[None] @ b.Sigma
        half, full = b.sigma_pinv_half()
        if not self.general:
            return self.best_fit(G @ full, self.rank)
        fitted = self.best_fit(G @ half, self.rank)
        B, C = self.peft.factors(fitted)
        return self.peft.from_factors(B, half @ C)

    def a_step(self, params):
        if not self.general:
            return super().a_step(params)
        B, C = self.peft.factors(params)
        return self.batch.a_step_factors(B.swapaxes(1, 2), C.swapaxes(1, 2))


class Subspace(AdapterStep):
    """Factored population targets: block subspace iteration on R_t = (S − A) + B*_t C*_tᵀ.

    Each call applies R_t (psd: its symmetric part) once to the warm-started basis of
    every task — one GEMM of width T·r with the dense S − A plus rank-k corrections — and
    takes the best fit inside the current basis by Rayleigh–Ritz.  At a fixed point the
    basis spans the dominant invariant subspace, so the fit is the exact best fit.
    """

    name = "subspace"

    def __init__(self, ctx):
        super().__init__(ctx)
        b, xp = self.batch, self.xp
        self.kernels = ctx.backend.kernels
        self.psd = ctx.peft.family == "psd"
        if self.psd:
            if b.symmetric:
                self.L = self.R = b.Bs
            else:  # symmetric part of B*C*ᵀ: ½(B*C*ᵀ + C*B*ᵀ)
                self.L = xp.concatenate([b.Cs, b.Bs], axis=1)
                self.R = 0.5 * xp.concatenate([b.Bs, b.Cs], axis=1)
            # sym(B*C*ᵀ) may be indefinite: bound its most negative eigenvalue by its norm.
        self.shift_extra = 0.0 if b.symmetric else float(xp.sqrt(xp.max(b.target_gram())))
        self.power_iter_init = int(ctx.option("power_iter_init", 4))
        self.basis = None
        self._residual_of = self._residual = None
        self._stats_of = self._stats = self._previous = None
        self._shift = 0.0

    def _shifted_residual(self, A):
        """(D, σ): D = sym(S − A) for psd (else S − A), computed once per A by the fused
        ``residual_stats`` kernel, and σ = ‖D‖_F (+ a bound on −λ_min(sym B*C*ᵀ))."""
        if self._residual_of is not A:
            D, stats = self.kernels.residual_stats(self.batch.S, A, A, self.psd)
            self._remember(A, D, stats)
        return self._residual, self._shift

    def _remember(self, A, D, stats):
        self._residual_of, self._residual = A, D
        self._shift = stats[0] ** 0.5 + self.shift_extra

    def _apply_psd(self, A, X):
        """(rows of sym(R_t) X_t, σ).  σ ≥ −λ_min(R_t) (B*C*ᵀ's part is PSD for symmetric
        targets), so iterating with R_t + σI converges to the algebraically largest
        subspace the PSD fit needs, not that of large negative eigenvalues."""
        D, shift = self._shifted_residual(A)
        return self.kernels.apply_shared_lowrank(X, D, self.L, self.R), shift

    def _apply(self, A, X):
        """Rows of R_t X_t (X rows (T, r, d_in)) -> (T, r, d_out)."""
        b = self.batch
        return self.kernels.apply_shared_lowrank(X, self._shifted_residual(A)[0].T, b.Cs, b.Bs)

    def _apply_t(self, A, P):
        """Rows of R_tᵀ P_t (P rows (T, r, d_out)) -> (T, r, d_in)."""
        b = self.batch
        return self.kernels.apply_shared_lowrank(P, self._shifted_residual(A)[0], b.Bs, b.Cs)

    def _start(self, A):
        b, k = self.batch, self.kernels
        omega = self.ctx.backend.asarray(self.ctx.rng.standard_normal((b.T, self.rank, b.d_in)), self.ctx.dtype)
        Q = k.orthonormalize_rows(omega)
        del omega  # (T, r, d): 268 MB at d=4096, T=1024, r=8
        for _ in range(self.power_iter_init):
            if self.psd:
                Y, shift = self._apply_psd(A, Q)
                Q = k.psd_subspace_step(Q, Y, shift)[1]
            else:
                Q = k.orthonormalize_rows(self._apply_t(A, k.orthonormalize_rows(self._apply(A, Q))))
        self.basis = Q

    def fit(self, A, params):
        k = self.kernels
        if self.basis is None:
            self._start(A)
        if self.psd:
            Y, shift = self._apply_psd(A, self.basis)
            U, self.basis = k.psd_subspace_step(self.basis, Y, shift)
            U = U.swapaxes(1, 2)
            return self.peft.from_factors(U, U)
        P = k.orthonormalize_rows(self._apply(A, self.basis))
        B, C, self.basis = k.ritz_general(P, self._apply_t(A, P))
        return self.peft.from_factors(B.swapaxes(1, 2), C.swapaxes(1, 2))

    def _rows(self, params):
        B, C = self.peft.factors(params)
        return (B.swapaxes(1, 2), C.swapaxes(1, 2)) if B is not C else (B.swapaxes(1, 2),) * 2

    def a_step(self, params):
        B, C = self._rows(params)
        # the new residual overwrites the old one's memory (it has served this iteration's GEMM)
        A_new, D, stats = self.batch.a_step_factors_with_stats(B, C, self._residual_of, self.psd, out=self._residual)
        self._stats_of, self._stats, self._previous = A_new, stats, id(self._residual_of)
        self._remember(A_new, D, stats)
        return A_new

    # The per-iteration objective comes from an O(T·d·r²) identity whose rounding floor
    # (~eps·Σ‖B*C*ᵀ‖²) is above zero's tolerance: it must not decide that the objective is
    # zero.  final_objective() recomputes the last value with the accurate QR form.
    objective_is_accurate = False

    def objective_and_change(self, A_new, A_old, params):
        if self._stats_of is A_new and self._previous == id(A_old):
            stats = self._stats
        else:
            D, stats = self.kernels.residual_stats(self.batch.S, A_new, A_old, self.psd)
            self._remember(A_new, D, stats)
        self._dist_sq = stats[1]
        B, C = self._rows(params)
        objective = self.batch.objective_after_a_step(B, C, stats[1])
        return objective, (stats[2] / stats[3]) ** 0.5 if stats[3] > 0 else stats[2] ** 0.5

    def final_objective(self, A, params) -> float:
        B, C = self._rows(params)
        return max(self.batch.objective_after_a_step(B, C, self._dist_sq, accurate=True), 0.0)


class InnerGradient(AdapterStep):
    """``inner_iter`` gradient steps on every θ_t, each with its own Armijo backtracking.

    Step sizes persist between calls (warm start), so later ALS iterations rarely backtrack.
    """

    name = "inner"
    exact = False
    warm_start = True

    def __init__(self, ctx, steps: int | None = None):
        super().__init__(ctx)
        self.pullback = method(ctx.peft, ctx.backend.name, "pullback")
        self.steps = int(steps if steps is not None else ctx.option("inner_iter", 10))
        self.lr = None
        self.uses_base = bool(getattr(ctx.peft, "uses_base", False))

    def fit(self, A, params):
        xp, b = self.xp, self.batch
        if self.uses_base:  # Δ depends on A: bind it (its "base" gradient is not used here)
            self.delta_fn, self.pullback = bind_base(self.peft, self.ctx.backend.name, A)
        if params is None:
            params = self.ctx.init_params(A)
        if self.lr is None:
            self.lr = xp.ones(b.T, dtype=self.ctx.dtype)
        losses = b.losses(A, self.delta_fn(params))
        for _ in range(self.steps):
            params, losses, moved = self._step(A, params, losses)
            if not moved:
                break
        return params

    def residual(self) -> float:
        """‖∇_θ‖ at the start of the last step, relative to the first one seen: ALS may call
        the solve converged only when this is small too (A can stall while θ still moves)."""
        return self._grad_rel

    _grad_rel = 1.0
    _grad_ref = None

    def _step(self, A, params, losses):
        xp, b = self.xp, self.batch
        grads = self.pullback(params, b.grad(A, self.delta_fn(params)))
        grads.pop("base", None)
        gsq = sum(xp.sum(g.reshape(b.T, -1) ** 2, axis=1) for g in grads.values())
        total = float(xp.sqrt(xp.sum(gsq)))
        self._grad_ref = self._grad_ref or total or 1.0
        self._grad_rel = total / self._grad_ref
        # below this decrease a comparison of two losses is rounding noise: the task is
        # converged for this A (shrinking the step further would only chase noise)
        noise = 64 * xp.finfo(losses.dtype).eps * xp.abs(losses)
        pending = 0.5 * self.lr * gsq > noise
        new_params, new_losses = dict(params), losses
        for _ in range(40):
            if not bool(pending.any()):
                break
            cand = {name: (p - _per_task(self.lr, p) * grads[name]) if name in grads else p
                    for name, p in params.items()}
            cand_losses = b.losses(A, self.delta_fn(cand))
            ok = pending & (cand_losses <= losses - 0.5 * self.lr * gsq)
            for name in grads:
                new_params[name] = xp.where(_per_task(ok, cand[name]), cand[name], new_params[name])
            new_losses = xp.where(ok, cand_losses, new_losses)
            shrink = pending & ~ok & (0.25 * self.lr * gsq > noise)  # halving keeps it above noise
            self.lr = xp.where(ok, 2 * self.lr, xp.where(shrink, 0.5 * self.lr, self.lr))
            pending = shrink
        return new_params, new_losses, bool(xp.any(gsq > 0))


def _per_task(values, like):
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


def choose_adapter_step(ctx, mode: str | None = None, fixed_A: bool = False) -> AdapterStep:
    mode = mode or ctx.option("adapter_step", "auto")
    allowed = ("auto", "subspace", "exact", "whitened", "inner")
    if mode not in allowed:
        raise FastLoRAError(f"adapter_step={mode!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
    batch, peft = ctx.batch, ctx.peft
    family = getattr(peft, "family", None)
    if getattr(peft, "uses_base", False):
        if not fixed_A:
            raise FastLoRAError(f"peft {peft.name!r} depends on the shared matrix A (uses_base), so ALS has no "
                                f"closed-form A step for it; use solver='gd'")
        return InnerGradient(ctx)
    has_fit = callable(method(peft, ctx.backend.name, "best_fit"))
    if mode == "inner":
        return InnerGradient(ctx)
    if batch.kind == "factored" and family in ("psd", "general") and mode in ("auto", "subspace"):
        return Subspace(ctx)
    if batch.is_population and has_fit and mode in ("auto", "exact"):
        return DenseExact(ctx)
    if not batch.is_population and family in ("general", "full") and mode in ("auto", "whitened"):
        return WhitenedFinite(ctx)
    if mode == "auto":
        return InnerGradient(ctx)
    raise FastLoRAError(f"adapter_step={mode!r} is not possible for peft {peft.name!r} (family={family!r}, "
                        f"best_fit={'yes' if has_fit else 'no'}) on {batch.kind} tasks; use 'auto' or 'inner'")
