"""Settings with documented defaults, read once from the environment; ``reset()`` restores them.

=================================  ==========================================  =================
setting                            meaning                                     environment
=================================  ==========================================  =================
``cache_dir``                      where compiled Numba kernels are kept       ``FASTLORA_CACHE_DIR``
``num_threads``                    Numba threads (``None``: all usable cores)  ``FASTLORA_NUM_THREADS``
``default_backend``                backend used by ``backend="auto"`` callers   ``FASTLORA_BACKEND``
``fastmath``                       Numba ``fastmath`` flag for every kernel     ``FASTLORA_FASTMATH``
``plugin_autoload``                read the ``fastlora.peft`` entry points      ``FASTLORA_DISABLE_PLUGIN_AUTOLOAD``
``allow_tf32``                     let CuPy use TF32 tensor cores for float32   ``FASTLORA_ALLOW_TF32``
=================================  ==========================================  =================

``fastmath`` is off by default: it lets LLVM reassociate sums, which breaks the 1e-10
parity between backends that the test-suite checks.  TF32 is off by default for the
same reason (it rounds float32 GEMM inputs to 10 mantissa bits).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _default_cache_dir() -> Path:
    if os.environ.get("FASTLORA_CACHE_DIR"):
        return Path(os.environ["FASTLORA_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastlora"


def _default_threads() -> int | None:
    raw = os.environ.get("FASTLORA_NUM_THREADS", "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"FASTLORA_NUM_THREADS={raw!r} must be a positive integer") from None
    if value < 1:
        raise ValueError(f"FASTLORA_NUM_THREADS={raw!r} must be a positive integer")
    return value


@dataclass
class Settings:
    cache_dir: Path
    num_threads: int | None
    default_backend: str
    fastmath: bool
    plugin_autoload: bool
    allow_tf32: bool

    @classmethod
    def from_environment(cls) -> "Settings":
        return cls(
            cache_dir=_default_cache_dir(),
            num_threads=_default_threads(),
            default_backend=os.environ.get("FASTLORA_BACKEND", "auto").strip() or "auto",
            fastmath=_flag("FASTLORA_FASTMATH"),
            plugin_autoload=not _flag("FASTLORA_DISABLE_PLUGIN_AUTOLOAD"),
            allow_tf32=_flag("FASTLORA_ALLOW_TF32"),
        )

    @property
    def numba_cache_dir(self) -> Path:
        return self.cache_dir / "numba"


settings = Settings.from_environment()


def reset() -> None:
    """Restore every setting to its default (re-reading the environment)."""
    fresh = Settings.from_environment()
    for f in fields(Settings):
        setattr(settings, f.name, getattr(fresh, f.name))


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1
