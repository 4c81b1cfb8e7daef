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
from .base import Batch
from .finite import FiniteSample
from .iterates import Adapters, Iterate, SharedResidual, TaskResidual
from .policy import (
    DENSE_MAX_DIM,
    FACTORED_CHOICES,
    as_task_list,
    batch_kind,
    factored_targets,
    is_small,
    make_batch,
    shares_one_base,
    stack_problems,
)
from .population import DensePopulation, FactoredPopulation

__all__ = ["DENSE_MAX_DIM", "FACTORED_CHOICES", "Adapters", "Batch", "DensePopulation", "FactoredPopulation",
           "FiniteSample", "Iterate", "SharedResidual", "TaskResidual", "as_task_list", "batch_kind",
           "factored_targets", "is_small", "make_batch", "shares_one_base", "stack_problems"]
