"""How the engine's source is compiled, without importing Numba (docs/design.md, "The compiled engine").

Every function of the engine's source is marked :func:`jitable`; as plain Python over numpy
arrays it is the readable reference the numpy backend runs.  :mod:`fastlora.engine.compiled`
(imported by the numba backend only) registers the marked functions with Numba, so that a
compiled entry point calls their compiled versions: one source, two execution models.

``prange`` is ``range`` here; the compiled module swaps in ``numba.prange`` (a batch of
problems runs in parallel there, one problem per iteration of the loop).
"""
from __future__ import annotations

JITABLE: list = []

prange = range


def jitable(fn):
    """Mark ``fn`` as engine source (compiled by Numba when called from a compiled entry point)."""
    JITABLE.append(fn)
    return fn
