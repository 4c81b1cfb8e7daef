"""Classify an endpoint of a LoRA-ML solve: global minimum, spurious minimum, saddle, ...

Kinds, decided in this order (tolerances relative to the problem's own scales, see
:class:`Tolerances`):

* ``"not stationary"`` — ‖∇F‖ > grad_tol · g_scale, g_scale = Σ_t ‖∇L_t(0)‖_F.
* ``"global"``         — F ≤ F_global + obj_tol · f_scale, f_scale = Σ_t L_t(0).
* ``"saddle"``         — the smallest projected Hessian eigenvalue λ_min < −eig_tol · h_scale
  (h_scale = max |eigenvalue| found) and a step along its eigenvector is checked to
  decrease F by at least ¼η²|λ_min| (the direction is returned).
* ``"spurious"``       — λ_min > eig_tol · h_scale: a strict local minimum modulo the
  parameterization's symmetries, above the global value.
* ``"degenerate"``     — stationary, above the global value, and the second-order test is
  inconclusive (|λ_min| ≤ eig_tol · h_scale, or negative curvature along which no
  decrease of F could be shown).

Why these scales: each tolerance is relative to a quantity of the problem itself, so it is
invariant under rescaling the data (W* → cW* scales F, ∇F and H by c², c, c, and the
scales alike).  The solvers stop at ‖∇F‖ ≈ tol·‖∇F(start)‖ (tol = 1e-10), far below
grad_tol = 1e-6; near a minimum F − F* ≈ ‖∇F‖²/2λ_min, far below obj_tol = 1e-9; the
eigenvalues of a point that is stationary only to grad_tol, and rounding (≈ eps·‖H‖), move
them by much less than eig_tol · h_scale = 1e-6 · h_scale.

The global value F_global: 0 for realisable population problems (factored targets
W*_t = S + B*_t C*_tᵀ with one shared S and rank k ≤ r; for ``lora_sym`` also B*_t = C*_t);
otherwise it must be passed (``global_value=``) or is computed by :func:`global_reference`
(the objective of a tight reference solve, tightened by :func:`fastlora.landscape.census` to
the lowest objective any start reached — every observed value bounds the global minimum above).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..engine.steps import sufficient_decrease
from ..errors import check_float
from ..options import rank_or_problem_k
from ..taskbatch import shares_one_base
from .hessian import HessianSpectrum, landscape_at, spectrum_at
from .objective import LandscapeModel, Point, as_point

KINDS = ("global", "spurious", "saddle", "degenerate", "not stationary")


@dataclass(frozen=True)
class Tolerances:
    """Relative tolerances of :func:`classify` (defaults suit float64 solves to tol ≈ 1e-10).

    ``grad_tol``: ‖∇F‖ / Σ_t‖∇L_t(0)‖ below which a point is stationary.
    ``obj_tol``: (F − F_global) / Σ_t L_t(0) below which it is a global minimum.
    ``eig_tol``: |λ| / max|λ| below which an eigenvalue counts as zero.
    """

    grad_tol: float = 1e-6
    obj_tol: float = 1e-9
    eig_tol: float = 1e-6

    def __post_init__(self):
        for name in ("grad_tol", "obj_tol", "eig_tol"):
            check_float(name, getattr(self, name), low=0.0, low_open=True)


@dataclass
class Classification:
    """What :func:`classify` found at one point.

    ``kind`` one of ``KINDS``; ``objective`` F; ``global_value`` the reference it was
    compared with; ``grad_norm`` ‖∇F‖; ``min_eig`` / ``max_eig`` the extreme projected
    Hessian eigenvalues; ``direction`` (saddles) a structured unit direction of negative
    curvature {"A": ..., name: ...} with eigenvalue ``direction_eig``; ``descent`` (saddles)
    {"step": η, "objective": F(x + ηv), "decrease": F − F(x + ηv)}; ``spectrum`` the
    :class:`HessianSpectrum`.
    """

    kind: str
    objective: float
    global_value: float
    grad_norm: float
    grad_scale: float
    min_eig: float
    max_eig: float
    direction: dict | None = field(default=None, repr=False)
    direction_eig: float | None = None
    descent: dict | None = None
    spectrum: HessianSpectrum | None = field(default=None, repr=False)
    note: str = ""


def realisable_global_value(model: LandscapeModel) -> float | None:
    """0.0 when the population tasks are exactly fitted by some (A, θ_t), else None (unknown)."""
    if not model.is_population:
        return None
    if not shares_one_base(model.tasks):
        return None
    targets = [t.target for t in model.tasks]
    if any(g.B.shape[1] > model.rank for g in targets):
        return None
    if model.peft.name == "lora_sym" and not all(g.symmetric or np.array_equal(g.B, g.C) for g in targets):
        return None  # U Uᵀ fits only PSD perturbations B Bᵀ
    return 0.0


def global_reference(problem_or_tasks, peft="lora_sym", rank: int | None = None, *, model=None) -> float:
    """The reference global value F_global (see the module docstring).

    0 for realisable population problems; otherwise the objective of a tight reference
    solve from the default start (``fastlora.retrain(..., solver="gd", optimizer="lbfgs",
    tol=1e-12)``, A = the standard solution) — an upper bound on the minimum.  (L-BFGS, not
    ALS: for ``lora_sym`` with finite samples ALS takes inner gradient steps and needs
    thousands of iterations to reach this accuracy.)
    """
    import fastlora as fl

    rank = rank_or_problem_k(rank, problem_or_tasks)
    model = model or LandscapeModel(problem_or_tasks, peft, rank)
    known = realisable_global_value(model)
    if known is not None:
        return known
    res = fl.retrain(problem_or_tasks, method="lora-ml", peft=model.peft, rank=rank, solver="gd", optimizer="lbfgs",
                     tol=1e-12, max_iter=5000, backend="numpy")
    return model.value(as_point(res))


def classify(res, problem_or_tasks, *, peft=None, rank: int | None = None, global_value: float | None = None,
             tolerances: Tolerances | None = None, spectrum: HessianSpectrum | None = None) -> Classification:
    """Classify the point ``res`` (a RetrainResult, dict or (A, params) tuple) of F.

    ``global_value``: F at a global minimum; default :func:`global_reference` (0 for
    realisable population problems).  ``tolerances``: :class:`Tolerances`.  ``spectrum``: a
    precomputed :func:`hessian_spectrum` at this point (skips recomputing it).
    """
    model, point = landscape_at(res, problem_or_tasks, peft, rank)
    if global_value is None:
        global_value = global_reference(problem_or_tasks, model.peft, model.rank, model=model)
    return classify_at(model, point, global_value, tolerances or Tolerances(), spectrum)


def classify_at(model: LandscapeModel, point: Point, global_value: float, tol: Tolerances,
                spectrum: HessianSpectrum | None = None) -> Classification:
    """:func:`classify` for a checked point of an existing model, against a given global value."""
    global_value = check_float("global_value", global_value)
    objective, G = model.residual_gradients(point)
    gradient = model.flatten(model.gradient(point, G))
    grad_norm = float(np.linalg.norm(gradient))
    grad_scale = model.gradient_scale()
    if spectrum is None:
        spectrum = spectrum_at(model, point, k_eigs=1)
    min_eig, max_eig = spectrum.min_eig, spectrum.max_eig
    out = Classification(kind="", objective=objective, global_value=global_value, grad_norm=grad_norm,
                         grad_scale=grad_scale, min_eig=min_eig, max_eig=max_eig, spectrum=spectrum)
    zero_eig = tol.eig_tol * max(abs(min_eig), abs(max_eig))
    if grad_norm > tol.grad_tol * grad_scale:
        out.kind = "not stationary"
    elif objective <= global_value + tol.obj_tol * model.objective_scale():
        out.kind = "global"
    elif min_eig < -zero_eig:
        out.descent = descent_step(model, point, objective, gradient, spectrum.smallest_directions[0], min_eig)
        if out.descent is not None:
            out.kind, out.direction_eig = "saddle", min_eig
            out.direction = out.descent.pop("direction")
        else:
            out.kind, out.note = "degenerate", "negative curvature, but no step along it decreased F"
    elif min_eig > zero_eig:
        out.kind = "spurious"
    else:
        out.kind, out.note = "degenerate", "stationary above the global value with a zero projected eigenvalue"
    return out


def descent_step(model: LandscapeModel, point, objective: float, gradient: np.ndarray, direction: dict,
                 eig: float) -> dict | None:
    """A checked decrease of F along a negative-curvature direction v (eigenvalue ``eig`` < 0).

    The sign of v is chosen so that ⟨∇F, v⟩ ≤ 0; η halves from max(1, ‖x‖) until
    F(x + ηv) ≤ F(x) − ¼η²|eig| (the second-order model promises ½η²|eig|).  Returns
    {"step", "objective", "decrease", "direction"} or None when no η (down to 2⁻⁶⁰) works.
    """
    v = model.flatten(direction)
    if float(gradient @ v) > 0:
        v = -v
    x = model.point_vector(point)
    eta = max(1.0, float(np.linalg.norm(x)))
    for _ in range(60):
        value = model.value(model.point_from_vector(x + eta * v))
        if sufficient_decrease(objective, value, 0.25 * eta * eta * abs(eig), 0.0):
            return {"step": eta, "objective": value, "decrease": objective - value, "direction": model.unflatten(v)}
        eta *= 0.5
    return None
