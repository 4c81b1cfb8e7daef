"""Landscape tools for the LoRA-ML objective of linear models (docs/design.md §2).

* :func:`hessian_spectrum` — extreme eigenvalues of the Hessian of F(A, θ_1..θ_T) at a point,
  by exact Hessian-vector products, with the parameterization's symmetries projected out.
* :func:`classify` — global minimum, spurious minimum, saddle (with a checked descent
  direction), degenerate, or not stationary.
* :func:`census` — many random starts, each solved and classified; :func:`landscape_metrics`
  condenses one census for a sweep row.
* :func:`find_spurious_minimum` — a search for a certified spurious local minimum (T ≥ 3);
  :func:`spurious_minimum_example` — one, reproducible from a seed; :func:`embedded_spurious_minimum`
  — the same in any dimension d ≥ 3.
"""
from .census import CENSUS_KINDS, INITS, CensusResult, census, draw_starts, landscape_metrics
from .classify import KINDS, Classification, Tolerances, classify, global_reference
from .construct import (
    SpuriousMinimum,
    embedded_spurious_minimum,
    find_spurious_minimum,
    polish,
    spurious_minimum_example,
)
from .hessian import HessianSpectrum, hessian_spectrum
from .objective import LandscapeModel, Point

__all__ = ["CENSUS_KINDS", "INITS", "KINDS", "CensusResult", "Classification", "HessianSpectrum", "LandscapeModel",
           "Point", "SpuriousMinimum", "Tolerances", "census", "classify", "draw_starts", "embedded_spurious_minimum",
           "find_spurious_minimum", "global_reference", "hessian_spectrum", "landscape_metrics", "polish",
           "spurious_minimum_example"]
