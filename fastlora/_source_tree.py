"""Import ``fastlora.kernels`` / ``fastlora.baselines`` from a source tree (a clone).

An installed fastlora has them as subpackages (setup.py maps ``kernels/`` and
``bench/baselines/`` there, docs/design.md §4).  A clone keeps them beside ``fastlora/``; when
this package has no ``kernels/`` of its own and the sibling folders exist, importing this
module (``fastlora/__init__.py`` does, first) puts a meta-path finder in front that
resolves the two names to the siblings.  It only locates modules: ``import fastlora``
still imports neither numba nor cupy.  Ahead of the other finders, because a stale
(or editable) install's mapping must not win over the tree this ``fastlora/`` came from.
"""
from __future__ import annotations

import sys
from importlib.machinery import PathFinder
from pathlib import Path


class SourceTreeSubpackages:
    """A meta-path finder mapping full module names to the folder that holds them."""

    def __init__(self, locations: dict[str, str]):
        self.locations = locations

    def find_spec(self, fullname, path=None, target=None):
        folder = self.locations.get(fullname)
        # PathFinder looks for the last name component ("kernels") inside ``folder``
        return None if folder is None else PathFinder.find_spec(fullname, [folder])


def install() -> SourceTreeSubpackages | None:
    """Install the finder when running from a source tree; the finder, or None."""
    here = Path(__file__).resolve().parent
    root = here.parent
    if (here / "kernels").is_dir() or not (root / "kernels" / "__init__.py").is_file():
        return None  # an installed package, or no source tree around it
    for finder in sys.meta_path:
        if isinstance(finder, SourceTreeSubpackages):
            return finder
    finder = SourceTreeSubpackages({"fastlora.kernels": str(root), "fastlora.baselines": str(root / "bench")})
    sys.meta_path.insert(0, finder)
    return finder


install()
