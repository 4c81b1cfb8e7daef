"""Array-module helpers (``array_module``, Frobenius norms): the kernel contract's, re-exported."""
from __future__ import annotations

from .kernels.arrays import array_module, batched_frobenius_sq, frobenius_sq, reusable

__all__ = ["array_module", "batched_frobenius_sq", "frobenius_sq", "reusable"]
