"""The LoRA-ML objective of linear models with its exact first and second derivatives.

    F(A, θ_1..θ_T) = Σ_t L_t(W_t),   W_t = A + Δ(θ_t),   G_t = ∇L_t(W_t)       (docs/design.md §2)

Population: L_t(W) = ½‖W − W*_t‖²_F, ∇²L_t[V] = V.  Finite sample: L_t(W) = ½tr(WΣ_tWᵀ) −
tr(WC_tᵀ) + s_t, ∇²L_t[V] = VΣ_t.  For a direction (dA, dθ), with dW_t = dA + DΔ_θt[dθ_t],
the Hessian-vector product is exact (no finite differences)::

    (H d)_A  = Σ_t ∇²L_t[dW_t]
    (H d)_θt = DΔ_θtᵀ[∇²L_t[dW_t]] + D²Δ_θt[dθ_t]ᵀ G_t

DΔᵀ is the parameterization's own ``pullback``; DΔ (``jvp``), the second term (``curvature``: the
curvature of Δ contracted with G_t) and the symmetry tangents are members of the parameterization
protocol (fastlora.peft.protocol); the built-ins':

* ``lora_sym``, Δ = U Uᵀ:        DΔ[dU] = dU Uᵀ + U dUᵀ,  D²Δ term = (G + Gᵀ) dU.
* ``lora``,     Δ = s B Cᵀ:       DΔ[dB, dC] = s(dB Cᵀ + B dCᵀ),
                                 D²Δ term = (s G dC, s Gᵀ dB).

Symmetries of F (directions along which it is constant, docs/design.md §2, fact 2):
``lora_sym``: U_t → U_t O, tangents dU_t = U_t K, K skew (k(k−1)/2 per task);
``lora``: (B_t, C_t) → (B_t M, C_t M⁻ᵀ), tangents (B_t K, −C_t Kᵀ), any r×r K (r² per task).

Everything here is numpy on the host (dense W*_t, or Σ_t and C_t, stacked from the tasks):
the landscape tools analyse small problems.
Directions carry any number of leading batch axes, so the whole Hessian of a small
problem is assembled by one batched product with the identity.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import peft as peft_registry
from ..errors import FastLoRAError
from ..kernels.packing import Packer
from ..peft.protocol import SECOND_ORDER, has_second_order
from ..solvers.common import RetrainResult
from ..taskbatch import as_task_list
from ..tasks import least_squares_fits, quadratic_losses

SUPPORTED_PEFT = ("lora_sym", "lora")
_HVP_BLOCK = 256  # directions per batched HVP when assembling a dense Hessian (bounds memory)


def resolve_peft(peft):
    """The parameterization object: any one with the exact second-order members of the protocol
    (``jvp``, ``curvature``, ``symmetry_tangents``; the built-ins ``lora_sym`` and ``lora`` have them)."""
    obj = peft_registry.get(peft)
    if not has_second_order(obj):
        raise FastLoRAError(f"peft={getattr(obj, 'name', peft)!r} is not supported by the landscape tools: it lacks "
                            f"the exact derivatives {', '.join(SECOND_ORDER)} of the parameterization protocol "
                            f"(docs/plugins.md); the built-ins {', '.join(map(repr, SUPPORTED_PEFT))} have them")
    return obj


@dataclass
class Point:
    """A point (A, θ) of the LoRA-ML objective: A (d_out, d_in), params {name: (T, ...)}."""

    A: np.ndarray
    params: dict


def as_point(res_or_point) -> Point:
    """A :class:`Point` from a RetrainResult, a dict {"A": ..., <param>: ...} or a tuple (A, params)."""
    if isinstance(res_or_point, Point):
        return res_or_point
    if isinstance(res_or_point, RetrainResult):
        A, params = res_or_point.A, res_or_point.params
    elif isinstance(res_or_point, dict):
        if "A" not in res_or_point:
            raise FastLoRAError("a point given as a dict needs the key 'A' beside the adapter parameters")
        A = res_or_point["A"]
        params = {k: v for k, v in res_or_point.items() if k != "A"}
    elif isinstance(res_or_point, tuple) and len(res_or_point) == 2 and isinstance(res_or_point[1], dict):
        A, params = res_or_point
    else:
        raise FastLoRAError("res_or_point must be a RetrainResult, a dict with 'A' and the adapter parameters, "
                            f"or a tuple (A, params); got {type(res_or_point).__name__}")
    A = np.asarray(A, dtype=np.float64)
    params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    for name, value in [("A", A), *params.items()]:
        if not np.isfinite(value).all():
            raise FastLoRAError(f"the point's {name!r} has non-finite entries")
    return Point(A, params)


class LandscapeModel:
    """F, ∇F and exact Hessian-vector products at points of one problem (see module docstring).

    ``tasks``: a Problem, Task or list of Tasks; ``peft``: "lora_sym" or "lora" (a name,
    class or instance); ``rank``: adapter rank r.
    """

    def __init__(self, problem_or_tasks, peft, rank: int):
        self.tasks = as_task_list(problem_or_tasks)
        self.peft = resolve_peft(peft)
        first = self.tasks[0]
        self.T, self.d_out, self.d_in = len(self.tasks), first.d_out, first.d_in
        if getattr(self.peft, "square_only", False) and self.d_out != self.d_in:
            raise FastLoRAError(f"peft={self.peft.name!r} needs d_out == d_in, got {self.d_out} and {self.d_in}")
        self.rank = rank
        self.shapes = {name: (self.T, *shape) for name, shape in self.peft.shapes(self.d_out, self.d_in, rank).items()}
        self.param_names = tuple(self.shapes)
        self.is_population = first.is_population
        if self.is_population:
            self.W_star = np.stack([t.W_star for t in self.tasks])                     # (T, d_out, d_in)
        else:
            self.Sigma = np.stack([t.Sigma for t in self.tasks])                       # (T, d_in, d_in)
            self.C = np.stack([t.C for t in self.tasks])                               # (T, d_out, d_in)
            self.s = np.array([t.s for t in self.tasks])                               # (T,)
            self.W_hat, self.floor = least_squares_fits(self.tasks)[:2]                # Ŵ_t, L_t(Ŵ_t)
        self.names = ("A", *self.param_names)
        self.packer = Packer({"A": (self.d_out, self.d_in), **self.shapes})
        self.dim = self.packer.size

    # -- points and directions ------------------------------------------------------------
    def check_point(self, point: Point) -> Point:
        if point.A.shape != (self.d_out, self.d_in):
            raise FastLoRAError(f"the point's A has shape {point.A.shape}; the tasks need {(self.d_out, self.d_in)}")
        if set(point.params) != set(self.param_names):
            raise FastLoRAError(f"the point's adapter parameters are {sorted(point.params)}; "
                                f"peft {self.peft.name!r} needs {sorted(self.param_names)}")
        for name, shape in self.shapes.items():
            if point.params[name].shape != shape:
                raise FastLoRAError(f"the point's {name!r} has shape {point.params[name].shape}; "
                                    f"expected {shape} (T, ..., rank={self.rank})")
        return point

    def flatten(self, tree: dict) -> np.ndarray:
        """Structured direction(s) {"A": (..., d_out, d_in), name: (..., T, ...)} -> (..., dim)."""
        return self.packer.pack(tree, np.shape(tree["A"])[:-2])

    def unflatten(self, vec: np.ndarray) -> dict:
        """(..., dim) -> {"A": (..., d_out, d_in), name: (..., T, ...)}."""
        return self.packer.unpack(np.asarray(vec))

    def point_vector(self, point: Point) -> np.ndarray:
        return self.flatten({"A": point.A, **point.params})

    def point_from_vector(self, vec) -> Point:
        tree = self.unflatten(np.asarray(vec, dtype=np.float64))
        return Point(tree.pop("A"), tree)

    # -- F and its derivatives ------------------------------------------------------------
    def weights(self, point: Point):
        """W_t = A + Δ(θ_t) (T, d_out, d_in)."""
        return point.A[None] + self.peft.delta(point.params)

    def losses(self, W):
        """Per task L_t(W_t) (T,), in the stable quadratic form of every loss (fastlora.tasks.quadratic_losses)."""
        if self.is_population:
            return 0.5 * np.sum((W - self.W_star) ** 2, axis=(-2, -1))
        return quadratic_losses(W, self.Sigma, self.W_hat, self.floor)

    def task_gradients(self, W):
        """G_t = ∇L_t(W_t): W_t − W*_t (population) or W_t Σ_t − C_t (T, d_out, d_in)."""
        return W - self.W_star if self.is_population else W @ self.Sigma - self.C

    def value(self, point: Point) -> float:
        return float(np.sum(self.losses(self.weights(point))))

    def residual_gradients(self, point: Point):
        """(F, G) with G_t = ∇L_t(A + Δ(θ_t)) (T, d_out, d_in)."""
        W = self.weights(point)
        return float(np.sum(self.losses(W))), self.task_gradients(W)

    def gradient(self, point: Point, G=None) -> dict:
        """∇F as a structured direction: {"A": Σ_t G_t, name: pullback(θ, G)}."""
        if G is None:
            G = self.residual_gradients(point)[1]
        return {"A": np.sum(G, axis=0), **self.peft.pullback(point.params, G)}

    def loss_hessian(self, V):
        """∇²L_t[V_t]: V (population) or V Σ_t (finite sample); V (..., T, d_out, d_in)."""
        return V if self.is_population else V @ self.Sigma

    def hvp(self, point: Point, direction: dict, G=None) -> dict:
        """Exact H·d for structured direction(s) d (leading batch axes allowed)."""
        if G is None:
            G = self.residual_gradients(point)[1]
        params = point.params
        dW = direction["A"][..., None, :, :] + self.peft.jvp(params, direction)
        HdW = self.loss_hessian(dW)
        out = {"A": np.sum(HdW, axis=-3)}
        first = self.peft.pullback(params, HdW)
        second = self.peft.curvature(params, G, direction)
        for name in self.param_names:
            out[name] = first[name] + second[name]
        return out

    def hessian_matrix(self, point: Point, G=None) -> np.ndarray:
        """The dense (dim, dim) Hessian, from one batched HVP with the identity (small problems)."""
        if G is None:
            G = self.residual_gradients(point)[1]
        eye = np.eye(self.dim)
        H = np.concatenate([self.flatten(self.hvp(point, self.unflatten(eye[i:i + _HVP_BLOCK]), G))
                            for i in range(0, self.dim, _HVP_BLOCK)])
        return 0.5 * (H + H.T)

    def symmetry_tangents(self, point: Point) -> np.ndarray:
        """(dim, m) the tangents of the parameterization's symmetry orbit at the point (not orthonormal)."""
        dirs = self.peft.symmetry_tangents(point.params)
        if not dirs:
            return np.zeros((self.dim, 0))
        zero_A = np.zeros((self.d_out, self.d_in))
        return np.stack([self.flatten({"A": zero_A, **d}) for d in dirs], axis=1)

    def standard_solution(self) -> np.ndarray:
        """argmin_A Σ_t L_t(A), by ``fastlora.retrain(method="standard")``."""
        import fastlora as fl
        return np.asarray(fl.retrain(self.tasks, method="standard", backend="numpy").A)

    # -- scales against which "small" is judged ----------------------------------------------
    def objective_scale(self) -> float:
        """Σ_t L_t(0): what F would be with no model at all."""
        return max(float(np.sum(self.losses(np.zeros((self.T, self.d_out, self.d_in))))), np.finfo(np.float64).tiny)

    def gradient_scale(self) -> float:
        """Σ_t ‖∇L_t(0)‖_F (‖W*_t‖ in population, ‖C_t‖ with finite samples)."""
        G0 = self.task_gradients(np.zeros((self.T, self.d_out, self.d_in)))
        return max(float(np.sum(np.sqrt(np.sum(G0 * G0, axis=(1, 2))))), np.finfo(np.float64).tiny)
