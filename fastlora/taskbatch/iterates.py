"""What a batch hands its solvers: every task's adapter update (:class:`Adapters`) and the shared
models at an iterate A with the residual adapter steps read (:class:`Iterate` and its kinds)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..kernels import ResidualNorms


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
