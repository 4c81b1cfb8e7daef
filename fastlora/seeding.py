"""One way to turn a user's ``seed`` into a numpy Generator."""
from __future__ import annotations

import numpy as np

from .errors import check_int


def as_generator(seed, name: str = "seed") -> np.random.Generator:
    """``seed``: a non-negative int, a ``numpy.random.SeedSequence`` or a ``Generator`` (used as is)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    return np.random.default_rng(check_int(name, seed, low=0))
