"""Named arrays <-> one flat vector: the one packer of fastlora.

A :class:`Packer` knows the names, in order, and the shape each array has after any number of
leading axes (problems, batches of directions); :meth:`Packer.pack` lays a dict of such arrays
out as (*lead, size) and :meth:`Packer.unpack` reads them back as views.  The L-BFGS driver
(fastlora.solvers.gd), the shallow network's optimizers and the landscape tools use it.
Generic over the array module (numpy, cupy); part of the kernel contract so every layer may use it.
"""
from __future__ import annotations

import math

from .arrays import array_module


class Packer:
    """``shapes``: {name: shape after the leading axes}, in packing order."""

    def __init__(self, shapes: dict):
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self.sizes = {name: math.prod(shape) for name, shape in self.shapes.items()}
        self.size = sum(self.sizes.values())

    def pack(self, tree: dict, lead: tuple = ()):
        """(*lead, size): the arrays of ``tree`` (each (*lead, *shape)), one after another."""
        xp = array_module(*(tree[name] for name in self.shapes))
        return xp.concatenate([xp.reshape(tree[name], (*lead, -1)) for name in self.shapes], axis=-1)

    def unpack(self, vec) -> dict:
        """{name: (*lead, *shape)} views of ``vec`` (*lead, size)."""
        lead, out, start = vec.shape[:-1], {}, 0
        for name, shape in self.shapes.items():
            out[name] = vec[..., start:start + self.sizes[name]].reshape(*lead, *shape)
            start += self.sizes[name]
        return out
