"""Adapter steps: the per-task best response of the adapters to a fixed shared A.

    θ_t ← argmin_θ L_t(A + Δ(θ))        for every task t, batched

The ALS solver alternates one of these with the batch's closed-form A step
(:meth:`fastlora.taskbatch.Batch.a_step`); :func:`fastlora.finetune` runs one on a single
task.  A step reads the model at A from the batch's :class:`~fastlora.taskbatch.Iterate` and
returns parameters; the objective and the A step belong to the batch.  Which one is used (``adapter_step="auto"``):

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

import numpy as np

from ..engine.steps import first_step, sufficient_decrease
from ..errors import FastLoRAError
from ..peft.protocol import bind_base, implementation, per_task_best_fit, shared_names
from ..taskbatch import Adapters


class AdapterStep(abc.ABC):
    name = "abstract"
    exact = True
    warm_start = False   # whether fit() uses the previous parameters
    symmetric = False    # whether it reads the symmetric part of the residual (PSD fits)
    extrapolable = True  # a fit at an extrapolated A is as good as at a plain ALS iterate (exact fits)

    def __init__(self, ctx):
        self.ctx, self.batch, self.peft, self.rank = ctx, ctx.batch, ctx.peft, ctx.rank
        self.xp = ctx.xp
        self.delta_fn = implementation(ctx.peft, ctx.backend.name, "delta")

    @abc.abstractmethod
    def fit(self, point, params):
        """New adapter parameters for every task given the model at ``point.A`` (``params``:
        the current ones, or None)."""

    def adapters(self, params) -> Adapters:
        """The updates Δ_t of ``params`` in the form the batch computes with fastest."""
        return Adapters.from_params(self.peft, params, self.delta_fn)


class DenseExact(AdapterStep):
    """θ_t = best_fit(W*_t − A): the parameterization's exact Frobenius best fit."""

    name = "exact"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.best_fit = implementation(ctx.peft, ctx.backend.name, "best_fit")

    def fit(self, point, params):
        return self.best_fit(self.batch.negative_gradient(point), self.rank)


class WhitenedFinite(AdapterStep):
    """Finite samples: min_Δ ½tr(ΔΣΔᵀ) − tr(ΔGᵀ), G = C − AΣ, solved exactly.

    family "general": Δ = [G Σ^{+1/2}]_r Σ^{+1/2} (reduced-rank regression);
    family "full":    Δ = G Σ^+.
    """

    name = "whitened"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.best_fit = implementation(ctx.peft, ctx.backend.name, "best_fit")
        self.general = ctx.peft.family == "general"

    def fit(self, point, params):
        half, full = self.batch.sigma_pinv_half()
        G = self.batch.negative_gradient(point)
        if not self.general:
            return self.best_fit(G @ full, self.rank)
        fitted = self.best_fit(G @ half, self.rank)
        B, C = self.peft.factors(fitted)
        return self.peft.from_factors(B, half @ C)


class Subspace(AdapterStep):
    """Factored population targets: block subspace iteration on R_t = (S − A) + B*_t C*_tᵀ.

    Each call applies R_t (psd: its symmetric part) once to the warm-started basis of
    every task — one GEMM of width T·r with the dense S − A plus rank-k corrections — and
    takes the best fit inside the current basis by Rayleigh–Ritz.  At a fixed point the
    basis spans the dominant invariant subspace, so the fit is the exact best fit.
    """

    name = "subspace"
    extrapolable = False  # one warm-started power step per call: poor at an extrapolated A

    def __init__(self, ctx):
        super().__init__(ctx)
        b, xp = self.batch, self.xp
        self.ops = ctx.backend.kernels
        self.symmetric = ctx.peft.family == "psd"
        if self.symmetric:
            if b.symmetric:
                self.left = self.right = b.B_rows
            else:  # symmetric part of B*C*ᵀ: ½(B*C*ᵀ + C*B*ᵀ)
                self.left = xp.concatenate([b.C_rows, b.B_rows], axis=1)
                self.right = 0.5 * xp.concatenate([b.B_rows, b.C_rows], axis=1)
        # sym(B*C*ᵀ) may be indefinite: bound its most negative eigenvalue by its norm
        self.shift_extra = 0.0 if b.symmetric else float(xp.sqrt(xp.max(b.target_gram())))
        self.power_iter_init = int(ctx.option("power_iter_init"))
        self.basis = None

    def _shift(self, point) -> float:
        """σ ≥ −λ_min(sym R_t): iterating with R_t + σI converges to the algebraically largest
        subspace the PSD fit needs, not to that of large negative eigenvalues."""
        return point.norms.residual_sq ** 0.5 + self.shift_extra

    def _apply_psd(self, point, X):
        """Rows of sym(R_t) X_t for rows X (T, r, d)."""
        return self.ops.apply_shared_lowrank(X, point.D, self.left, self.right)

    def _apply(self, point, X):
        """Rows of R_t X_t (X rows (T, r, d_in)) -> (T, r, d_out)."""
        return self.ops.apply_shared_lowrank(X, point.D.T, self.batch.C_rows, self.batch.B_rows)

    def _apply_t(self, point, P):
        """Rows of R_tᵀ P_t (P rows (T, r, d_out)) -> (T, r, d_in)."""
        return self.ops.apply_shared_lowrank(P, point.D, self.batch.B_rows, self.batch.C_rows)

    def _start(self, point):
        b, ops = self.batch, self.ops
        omega = self.ctx.backend.asarray(self.ctx.rng.standard_normal((b.T, self.rank, b.d_in)), self.ctx.dtype)
        Q = ops.orthonormalize_rows(omega)
        del omega  # (T, r, d): 268 MB at d=4096, T=1024, r=8
        shift = self._shift(point) if self.symmetric else 0.0
        for _ in range(self.power_iter_init):
            if self.symmetric:
                Q = ops.psd_subspace_step(Q, self._apply_psd(point, Q), shift)[1]
            else:
                Q = ops.orthonormalize_rows(self._apply_t(point, ops.orthonormalize_rows(self._apply(point, Q))))
        self.basis = Q

    def fit(self, point, params):
        ops = self.ops
        if self.basis is None:
            self._start(point)
        if self.symmetric:
            U, self.basis = ops.psd_subspace_step(self.basis, self._apply_psd(point, self.basis), self._shift(point))
            U = U.swapaxes(1, 2)
            return self.peft.from_factors(U, U)
        P = ops.orthonormalize_rows(self._apply(point, self.basis))
        B, C, self.basis = ops.ritz_general(P, self._apply_t(point, P))
        return self.peft.from_factors(B.swapaxes(1, 2), C.swapaxes(1, 2))


class InnerGradient(AdapterStep):
    """``inner_iter`` gradient steps on every θ_t, each with its own Armijo backtracking.

    Step sizes start at each task's 1/(tr(Σ_t)/d_in) (the shared parameters': 1/its mean over the tasks;
    1 on population tasks; engine.steps.first_step) and persist between calls (warm start), so later
    ALS iterations rarely backtrack.
    """

    name = "inner"
    exact = False
    warm_start = True
    extrapolable = False

    def __init__(self, ctx, steps: int | None = None, train_shared: bool = True):
        super().__init__(ctx)
        self.pullback = implementation(ctx.peft, ctx.backend.name, "pullback")
        self.steps = int(steps if steps is not None else ctx.option("inner_iter"))
        self.lr = None
        self.shared = set(shared_names(ctx.peft))
        self.train_shared = train_shared and bool(self.shared)
        self.shared_lr = 1.0
        self.uses_base = bool(getattr(ctx.peft, "uses_base", False))
        self.implicit = bool(getattr(ctx.peft, "implicit_gradient", False))
        self._grad_rel, self._grad_ref = np.ones(ctx.batch.P), None
        # the per-task parameters in closed form given the shared ones (docs/plugins.md), or None
        self._fit_given_shared = (per_task_best_fit(ctx.peft, ctx.backend.name) if ctx.batch.is_population
                                  else None)

    def fit(self, point, params):
        xp, b, A = self.xp, self.batch, point.A
        if self.uses_base:  # Δ depends on A (one problem): bind it (its "base" gradient is not used here)
            self.delta_fn, self.pullback = bind_base(self.peft, self.ctx.backend.name, A[0])
        if params is None:
            params = self.ctx.init_params(A)
        if self.lr is None:  # each task's first step at its data's scale (1 on population tasks)
            scales = b.curvature_scales()
            self.lr = xp.asarray([first_step(scales[i:i + 1]) for i in range(len(scales))], dtype=self.ctx.dtype)
            # the shared parameters (P = 1) couple every task: 1 / the mean scale (1 on population tasks)
            self.shared_lr = float(b.T * first_step(scales))
        exact = self._fit_given_shared
        if exact is not None:  # the per-task parameters in closed form given the shared ones (docs/plugins.md)
            shared = {k: v for k, v in params.items() if k in self.shared}
            params = {**params, **exact(b.negative_gradient(point), self.rank, shared)}
        losses = b.losses(A, self.adapters(params))
        for _ in range(1 if exact is not None else self.steps):  # after an exact fit: one step measures ∇
            params, losses, moved = self._step(A, params, losses)
            if not moved:
                break
        if self.train_shared:
            params = self._shared_steps(A, params)
        return params

    def _shared_steps(self, A, params):
        """``steps`` gradient steps on the shared parameters (protocol v2) with one Armijo line
        search on the total objective (they couple every task); the step size persists."""
        b = self.batch
        value = float(b.objective(A, self.adapters(params))[0])
        eps = float(np.finfo(self.ctx.dtype).eps)
        for _ in range(self.steps):
            grads = {k: v for k, v in self.pullback(params, b.gradient(A, self.adapters(params),
                                                                          implicit=self.implicit)).items()
                     if k in self.shared}
            gsq = sum(float(self.xp.sum(g * g)) for g in grads.values())
            floor = 8 * eps * abs(value)
            if 0.5 * self.shared_lr * gsq <= floor:
                break
            for _ in range(40):
                cand = {k: v - self.shared_lr * grads[k] if k in grads else v for k, v in params.items()}
                cand_value = float(b.objective(A, self.adapters(cand))[0])
                if sufficient_decrease(value, cand_value, 0.5 * self.shared_lr * gsq, floor):
                    params, value, self.shared_lr = cand, cand_value, 2 * self.shared_lr
                    break
                self.shared_lr *= 0.5
            else:
                break
        return params

    def residual(self):
        """‖∇_θ‖ per problem at the start of the last step, relative to the first one seen (P,):
        ALS may call a problem converged only when this is small too (A can stall while θ moves)."""
        return self._grad_rel

    def _step(self, A, params, losses):
        xp, b = self.xp, self.batch
        grads = self.pullback(params, b.gradient(A, self.adapters(params), implicit=self.implicit))
        grads.pop("base", None)
        shared_sq = sum(float(xp.sum(grads.pop(k) ** 2)) for k in list(grads) if k in self.shared)
        grads = {k: v for k, v in grads.items() if k not in self.shared}  # per-task parameters only
        n_tasks = b.P * b.T
        gsq = sum(xp.sum(g.reshape(n_tasks, -1) ** 2, axis=1) for g in grads.values())
        total = np.sqrt(b.host(b.sum_tasks(gsq)) + (shared_sq if self.train_shared else 0.0))
        if self._grad_ref is None:
            self._grad_ref = np.where(total > 0, total, 1.0)
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
            cand_losses = b.losses(A, self.adapters(cand))
            ok = pending & sufficient_decrease(losses, cand_losses, 0.5 * self.lr * gsq, noise)
            for name in grads:
                new_params[name] = xp.where(_per_task(ok, cand[name]), cand[name], new_params[name])
            new_losses = xp.where(ok, cand_losses, new_losses)
            shrink = pending & ~ok & (0.25 * self.lr * gsq > noise)  # halving keeps it above noise
            self.lr = xp.where(ok, 2 * self.lr, xp.where(shrink, 0.5 * self.lr, self.lr))
            pending = shrink
        return new_params, new_losses, bool(xp.any(gsq > 0))


def _per_task(values, like):
    return values.reshape((-1,) + (1,) * (like.ndim - 1))




def check_als_supported(peft, mode: str = "auto", fixed_A: bool = False) -> None:
    """What no ALS solve of ``peft`` can do, whatever the data: refused before any work (by
    ``fl.retrain`` and by sweep specs)."""
    if shared_names(peft) and mode not in ("auto", "inner"):  # exact fits refit every parameter
        raise FastLoRAError(f"adapter_step={mode!r} is not possible for peft {peft.name!r}: it has shared "
                            f"parameters {list(shared_names(peft))}; use 'auto' or 'inner'")
    if getattr(peft, "uses_base", False) and not fixed_A:
        raise FastLoRAError(f"peft {peft.name!r} depends on the shared matrix A (uses_base), so ALS has no "
                            f"closed-form A step for it; use solver='gd'")


def check_adapter_step_possible(peft, mode: str, population: bool) -> None:
    """An explicit ALS ``adapter_step`` that :func:`choose_adapter_step` cannot give for tasks of this
    kind (make_problem's targets: factored in population mode), whatever their sizes: refused
    before any work (sweep specs)."""
    family = getattr(peft, "family", None)
    has_fit = callable(getattr(peft, "best_fit", None))
    possible = {"exact": population and has_fit, "whitened": not population and family in ("general", "full"),
                "subspace": population and family in ("psd", "general")}.get(mode, True)
    if not possible:
        kind = "population" if population else "finite-sample"
        raise FastLoRAError(f"adapter_step={mode!r} is not possible for peft {peft.name!r} (family={family!r}, "
                            f"best_fit={'yes' if has_fit else 'no'}) on {kind} tasks; use 'auto' or 'inner'")


def choose_adapter_step(ctx, mode: str | None = None, fixed_A: bool = False) -> AdapterStep:
    mode = mode or ctx.option("adapter_step")
    batch, peft = ctx.batch, ctx.peft
    family = getattr(peft, "family", None)
    check_als_supported(peft, mode, fixed_A)
    if shared_names(peft):  # shared parameters need the inner steps
        return InnerGradient(ctx, train_shared=not fixed_A)
    if getattr(peft, "uses_base", False):
        return InnerGradient(ctx)
    has_fit = callable(implementation(peft, ctx.backend.name, "best_fit"))
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
