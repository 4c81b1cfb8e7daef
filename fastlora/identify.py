"""Was A* identified?  ``fl.evaluate(...)["identified"]`` and its reason (docs/identifiability.md).

A retraining identified A* when ‖A − A*‖_F / ‖A*‖_F ≤ :func:`identification_tolerance`.  When it did
not, two cases differ and are told apart:

* the objective is at its floor — at or below its value at the ground truth (A*, Δ*_t), which
  the adapters can represent — yet A ≠ A*: the objective does not pin A* (``identified=False``,
  ``"at the floor, A ≠ A*"``; e.g. rank r > k, T ≤ 2);
* the objective stopped above that floor (``identified=None``, ``"above the floor: not converged"``
  or ``"above the floor: stationary"`` when the solver reports convergence, e.g. a spurious
  minimum): nothing can be said about identifiability from this run.

Where the floor is not known (standard retraining, Reptile, adapters that cannot represent the
truth, parameterizations other than the built-in ones) a converged run with A ≠ A* counts as not
identified (``"converged, A ≠ A*"``) and an unconverged one as undecided.  Without ground truth, or
for the shallow network (no theorem; its A is identified up to a permutation of hidden units and
is never within a tolerance on noisy data), ``identified`` is None.
"""
from __future__ import annotations

import math

import numpy as np

# relative error of A at or below which A* counts as identified (noise-free data; the solvers'
# default tolerances leave ~1e-8 at isolated minima, non-identified minima sit at 1e-3 .. 1)
ID_RTOL = 1e-6
# with noisy samples: this many times the Frobenius error of one task's least-squares estimate,
# σ·√(d_out·tr(Σ⁻¹)/n), relative to ‖A*‖_F
ID_NOISE_FACTOR = 5.0
# the objective is at its floor when F ≤ F(truth) + FLOOR_RTOL · Σ_t L_t(0)
FLOOR_RTOL = 1e-9
# tasks larger than this are not evaluated at their ground truth (d³ per task): the floor is unknown
FLOOR_MAX_DIM = 512
# parameterizations that represent any rank-r perturbation (lora_sym: symmetric PSD ones only)
GENERAL_PEFT = ("lora", "full")

IDENTIFIED = "A = A*"
NOT_IDENTIFIED = "at the floor, A ≠ A*"
CONVERGED_OTHER = "converged, A ≠ A*"
NOT_CONVERGED = "above the floor: not converged"
STATIONARY_ABOVE = "above the floor: stationary"
NO_TRUTH = "no ground truth"


def identification_tolerance(prob) -> float:
    """The relative error of A below which A* counts as identified: ``ID_RTOL`` for population or
    noise-free problems, else max(ID_RTOL, ID_NOISE_FACTOR · σ √(d_out · tr(Σ⁻¹) / n) / ‖A*‖_F)."""
    noise, n = getattr(prob, "noise", 0.0) or 0.0, getattr(prob, "n", None)
    A_star = getattr(prob, "A_star", None)
    if n is None or noise == 0.0 or A_star is None:
        return ID_RTOL
    law = getattr(prob, "law", None)
    d_out, d_in = A_star.shape
    inverse_trace = law.inverse_trace(d_in) if law is not None else float(d_in)
    norm = float(np.linalg.norm(A_star)) if isinstance(A_star, np.ndarray) else math.inf
    return max(ID_RTOL, ID_NOISE_FACTOR * noise * math.sqrt(d_out * inverse_trace / n) / max(norm, 1e-300))


def identification(res, prob, rel_err_A: float) -> tuple[bool | None, str]:
    """(identified, reason) of a retraining ``res`` of ``prob`` whose A has relative error ``rel_err_A``
    (module docstring)."""
    if prob is None or getattr(prob, "A_star", None) is None or not np.isfinite(rel_err_A):
        return None, NO_TRUTH
    if rel_err_A <= identification_tolerance(prob):
        return True, IDENTIFIED
    converged = bool(getattr(res, "converged", False))
    floor = _floor(res, prob)
    if floor is None:
        return (False, CONVERGED_OTHER) if converged else (None, NOT_CONVERGED)
    value, scale = floor
    if float(res.objective) <= value + FLOOR_RTOL * scale:
        return False, NOT_IDENTIFIED
    return None, STATIONARY_ABOVE if converged else NOT_CONVERGED


def _floor(res, prob) -> tuple[float, float] | None:
    """(F at the ground truth, Σ_t L_t(0)) when the retraining's adapters can represent the truth
    and its tasks are small enough to evaluate, else None."""
    if getattr(res, "method", None) != "lora-ml" or not hasattr(res, "objective"):
        return None
    name = getattr(getattr(res, "peft", None), "name", None)
    ranks = getattr(prob, "task_ranks", None) or (prob.k,) * prob.T
    symmetric_truth = getattr(prob, "symmetric", False)
    if name not in GENERAL_PEFT and not (name == "lora_sym" and symmetric_truth):
        return None
    if (res.rank or 0) < max(ranks) and name != "full":
        return None
    tasks = prob.tasks
    if max(tasks[0].d_out, tasks[0].d_in) > FLOOR_MAX_DIM:
        return None
    if tasks[0].is_population:
        return 0.0, sum(0.5 * float(np.sum(t.W_star ** 2)) for t in tasks)
    return sum(t.loss(t.W_star) for t in tasks), sum(float(t.s) for t in tasks)
