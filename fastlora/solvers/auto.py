"""``solver="auto"`` (the default): the fastest solver that converges reliably, per problem kind.

=====================================  ===================================================  ===========================
tasks                                  parameterization                                     auto runs
=====================================  ===================================================  ===========================
population, factored (W* = S + B*C*ᵀ)  family "psd" / "general" (lora_sym, lora)            ALS in the factors' span
                                                                                            when smaller: exact step,
                                                                                            Anderson, up to 32
                                                                                            dimensions; above, subspace
                                                                                            step, not extrapolated
population (dense or factored)         with an exact ``best_fit`` (e.g. full)               ALS, exact step, Anderson
finite samples                         family "general" / "full" (lora, full)               ALS, reduced-rank regression
                                                                                            step, Anderson
finite samples                         lora_sym and others without an exact step            gd with L-BFGS
any                                    ``uses_base`` (DoRA) or no ``best_fit`` (VeRA, ...)   gd with L-BFGS
=====================================  ===================================================  ===========================

Why: where each half-step of ALS is an exact minimisation, Anderson-accelerated ALS keeps
the monotone decrease and reaches the paper-size optimum in tens of iterations.  Factored
targets are first reduced to the span of their factors where it is smaller than d
(``fastlora.reduction``, m ≤ 2·T·k).  Problems of at most ``taskbatch.DENSE_MAX_DIM`` = 32
dimensions (after reduction) are then solved densely: exact eigen/SVD fits and Anderson
extrapolation.  Larger ones use the subspace step (one warm-started block power step per
call), exact only at its fixed point, so it is not extrapolated: plain ALS.  Where the
adapter step has no closed form, ALS needs inner gradient iterations and converges slowly;
L-BFGS on the joint (A, θ) problem is then superlinear near the optimum.  The choice is
recorded in ``res.info["solver"]`` (and ``res.solver``), and in the sweep store.
"""
from __future__ import annotations

from ..peft.protocol import implementation


def choose_solver(kind: str, peft, backend_name: str) -> tuple[str, dict]:
    """(solver, default options) for a batch ``kind`` ("factored" | "dense" | "finite")."""
    if getattr(peft, "uses_base", False):
        return "gd", {"optimizer": "lbfgs"}
    family = getattr(peft, "family", None)
    exact_fit = callable(implementation(peft, backend_name, "best_fit"))
    if kind == "factored" and family in ("psd", "general"):
        return "als", {}
    if kind in ("factored", "dense") and exact_fit:
        return "als", {}
    if kind == "finite" and family in ("general", "full"):
        return "als", {}
    return "gd", {"optimizer": "lbfgs"}
