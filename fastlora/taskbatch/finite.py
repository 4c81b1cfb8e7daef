"""The finite-sample batch kind: sufficient statistics Σ_t, YᵀX/n and s_t of every task."""
from __future__ import annotations

import numpy as np

from ..arrays import residual_spreads
from ..errors import check_representable
from ..tasks import pinv_function
from .base import Batch
from .iterates import Iterate, TaskResidual


class FiniteSample(Batch):
    """Σ_t = XᵀX/n (P·T, d_in, d_in), ``cross`` = YᵀX/n (P·T, d_out, d_in), s_t = ‖Y‖²/2n (P·T,)."""

    kind = "finite"
    is_population = False

    def __init__(self, backend, dtype, Sigma, cross, s, n, P: int = 1, fits=None, spectrum=None):
        super().__init__(backend, dtype, P, cross.shape[0] // P, cross.shape[1], cross.shape[2])

        def cast(a):
            return backend.asarray(a, dtype)

        for a in (Sigma, cross):
            check_representable("the tasks' statistics", a, dtype)
        self.Sigma, self.cross, self.s = cast(Sigma), cast(cross), cast(s)
        self.n = np.asarray(n)
        W_hat, floor = fits
        self._least_squares = (cast(W_hat), cast(floor))
        self._spectrum = spectrum  # () -> (λ, V) of every task (fastlora.tasks.spectra), read on first use
        self._whiteners = None
        self._gram_solver = None

    def curvature_scales(self):
        trace = self.xp.trace(self.Sigma, axis1=1, axis2=2, dtype=self.xp.float64)  # as the engine sums it
        return np.asarray(self.backend.to_numpy(trace), dtype=np.float64) / self.d_in

    def residual_spreads(self, A=None):
        """The scale of what the adapters fit from A (None: the standard solution), host (P,)
        (:func:`fastlora.arrays.residual_spreads`: in Σ_t's metric)."""
        return residual_spreads(self._per_problem(self.least_squares()[0]), self._per_problem(self.Sigma), A)

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
            lam, V = (self.backend.asarray(a, self.dtype) for a in self._spectrum())
            eps = float(np.finfo(np.float64).eps)  # the spectrum is float64's (fastlora.tasks.spectra)
            self._whiteners = (pinv_function(lam, V, lambda x: 1.0 / xp.sqrt(x), eps, xp),
                               pinv_function(lam, V, lambda x: (1.0 / xp.sqrt(x)) ** 2, eps, xp))  # half's squares
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
            self._gram_solver = pinv_function(lam, V, xp.reciprocal, float(xp.finfo(lam.dtype).eps), xp)  # batch dtype
        return self._gram_solver

    def standard_solution(self):
        return self.a_step(None).A

    def null_objective(self):
        return self.host(self.sum_tasks(self.s))
