"""Shared ground truths too large to store: A* = (G + Gᵀ)/2 generated tile by tile on demand.

At d = 100,000 the paper's A* is 80 GB.  :class:`SeededSymmetricGaussian` draws the same law
(G_ij ~ N(0, 1)) from one SeedSequence per (d_tile × d_tile) tile of G, so any block can be
regenerated; products and the Frobenius norm stream over tile pairs in O(tile² + d·m)
memory.  Factored population problems never need A* itself (fastlora.reduction solves in the
span of the task factors, where the shared part cancels), so ``make_problem(...,
implicit=True)`` problems are solved, fine-tuned and evaluated without any d × d array.
The numbers differ from the dense draw of ``make_problem`` at the same seed (another order of
draws), the law does not.
"""
from __future__ import annotations

import numpy as np

from .config import format_bytes, require_memory
from .seeding import stream

TILE = 2048


class SeededSymmetricGaussian:
    """A* = (G + Gᵀ)/2 with G_ij ~ N(0, 1), d × d, never stored.

    Tile (I, J) of G is ``Generator(SeedSequence(seed, spawn_key=(role, I, J))).standard_normal``.
    ``A @ X`` and ``X @ A`` cost one generation of A* (d² normals) and 2·d²·m flops.
    """

    implicit = True
    ndim = 2
    dtype = np.dtype(np.float64)

    def __init__(self, d: int, seed: int, role: int = 0, tile: int = TILE):
        self.d, self.seed, self.role, self.tile = int(d), int(seed), int(role), int(tile)
        self._frobenius_sq = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.d, self.d)

    @property
    def T(self) -> SeededSymmetricGaussian:
        return self

    def _bounds(self, index: int) -> tuple[int, int]:
        return index * self.tile, min(self.d, (index + 1) * self.tile)

    def _G(self, row: int, col: int):
        (i0, i1), (j0, j1) = self._bounds(row), self._bounds(col)
        rng = stream(self.seed, (self.role, row, col))
        return rng.standard_normal((i1 - i0, j1 - j0))

    def block(self, row: int, col: int):
        """Tile (row, col) of A* (rows row·tile…, columns col·tile…)."""
        return 0.5 * (self._G(row, col) + self._G(col, row).T)

    def _pairs(self):
        """(row, col, tile) for row ≤ col, drawn two tiles ahead on a thread pool: numpy's generators
        release the GIL, so generation runs on every usable core."""
        from concurrent.futures import ThreadPoolExecutor

        from .config import usable_cores
        tiles = (self.d + self.tile - 1) // self.tile
        pairs = [(row, col) for row in range(tiles) for col in range(row, tiles)]
        workers = max(1, min(usable_cores(), len(pairs)))
        bar = _progress(len(pairs), self.d)
        with ThreadPoolExecutor(workers) as pool:
            pending = [pool.submit(self.block, row, col) for row, col in pairs[:2 * workers]]
            for index, (row, col) in enumerate(pairs):
                tile = pending[index].result()
                pending[index] = None  # release it once used
                if index + 2 * workers < len(pairs):
                    pending.append(pool.submit(self.block, *pairs[index + 2 * workers]))
                if bar is not None:
                    bar.update(1)
                yield row, col, tile
        if bar is not None:
            bar.close()

    def __matmul__(self, X):
        """A* @ X for X (d,) or (d, m), streaming over tile pairs."""
        X = np.asarray(X, dtype=np.float64)
        vector = X.ndim == 1
        X2 = X[:, None] if vector else X
        out = np.zeros((self.d, X2.shape[1]))
        for row, col, tile in self._pairs():
            (i0, i1), (j0, j1) = self._bounds(row), self._bounds(col)
            out[i0:i1] += tile @ X2[j0:j1]
            if row != col:
                out[j0:j1] += tile.T @ X2[i0:i1]
        return out[:, 0] if vector else out

    def __rmatmul__(self, X):
        """X @ A* = (A* Xᵀ)ᵀ (A* is symmetric)."""
        X = np.asarray(X, dtype=np.float64)
        return (self @ X.T).T

    def frobenius_sq(self) -> float:
        """‖A*‖²_F, exact (one generation of A*; cached)."""
        if self._frobenius_sq is None:
            total = 0.0
            for row, col, tile in self._pairs():
                total += (1.0 if row == col else 2.0) * float(np.vdot(tile, tile))
            self._frobenius_sq = total
        return self._frobenius_sq

    def expected_frobenius_sq(self) -> float:
        """E‖A*‖²_F = d + d(d−1)/2 (diagonal variance 1, off-diagonal ½): a scale known without drawing."""
        return self.d + self.d * (self.d - 1) / 2

    def dense(self):
        """A* as an array — only where it fits in memory."""
        require_memory(8 * self.d ** 2, f"the dense A* (d={self.d})", "keep it implicit (dense_A=False)")
        out = np.empty(self.shape)
        for row, col, tile in self._pairs():
            (i0, i1), (j0, j1) = self._bounds(row), self._bounds(col)
            out[i0:i1, j0:j1] = tile
            out[j0:j1, i0:i1] = tile.T
        return out

    def __array__(self, dtype=None, copy=None):
        out = self.dense()
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return (f"SeededSymmetricGaussian(d={self.d}, seed={self.seed}; implicit, "
                f"{format_bytes(8 * self.d ** 2)} if dense)")


# a pass over this many tile pairs or more (d ≳ 20,000: tens of seconds) shows a progress bar on a terminal
PROGRESS_MIN_PAIRS = 50


def _progress(pairs: int, d: int):
    import sys
    if pairs < PROGRESS_MIN_PAIRS or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=pairs, desc=f"generating A* (d={d})", unit="tile", leave=False, file=sys.stderr)


def is_implicit(matrix) -> bool:
    return bool(getattr(matrix, "implicit", False))
