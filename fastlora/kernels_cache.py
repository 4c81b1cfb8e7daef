"""The on-disk cache of compiled Numba kernels (``fastlora cache clear``)."""
from __future__ import annotations

import shutil

from .config import settings


def clear_cache() -> int:
    """Delete every cached kernel; returns the number of files removed."""
    root = settings.numba_cache_dir
    if not root.exists():
        return 0
    count = sum(1 for p in root.rglob("*") if p.is_file())
    shutil.rmtree(root)
    return count


def cache_summary() -> str:
    root = settings.numba_cache_dir
    files = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
    size = sum(p.stat().st_size for p in files)
    return f"{root}: {len(files)} file(s), {size / 1e6:.1f} MB"
