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

A malformed ``FASTLORA_NUM_THREADS`` or ``FASTLORA_BACKEND`` does not break ``import
fastlora`` (nor commands that never use it): reading the setting raises a
:class:`~fastlora.errors.FastLoRAError` naming the variable and what it allows.

Memory: :func:`available_memory_bytes` is what this process may still allocate, and
:func:`require_memory` refuses work whose estimated size exceeds it, before any work starts.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import FastLoRAError

# the backends and dtypes fastlora knows (fastlora.backends builds them; options, specs, the CLI and bench list them)
BACKENDS = ("numpy", "numba", "cupy")
BACKEND_CHOICES = ("auto", *BACKENDS)
DTYPE_NAMES = ("float64", "float32")

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


def _flag(name: str) -> bool:
    """A boolean environment variable; another value is warned about (naming it) and read as off —
    flags are read at import, which must not fail."""
    value = os.environ.get(name, "").strip().lower()
    if value not in _TRUE | _FALSE:
        import warnings
        warnings.warn(f"{name}={os.environ[name]!r} is not a boolean; it is read as off (use 1/0, true/false, "
                      f"yes/no or on/off)", RuntimeWarning, stacklevel=2)
    return value in _TRUE


def _default_cache_dir() -> Path:
    if os.environ.get("FASTLORA_CACHE_DIR"):
        return Path(os.environ["FASTLORA_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastlora"


def _parse_threads(value, source: str) -> int | None:
    """None (all usable cores) or a positive integer; ``source`` names where the value came from."""
    given = value
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FastLoRAError(f"{source}={given!r} is not allowed; it must be a positive integer (the number of "
                            f"Numba threads), or unset for all usable cores")
    return value


class _Invalid:
    """A malformed environment value: kept, and raised when the setting is read (not at import)."""

    def __init__(self, error: FastLoRAError):
        self.error = error


class Settings:
    """The process-wide settings (module attribute :data:`settings`); see the module docstring."""

    def __init__(self, *, cache_dir: Path, num_threads, default_backend: str, fastmath: bool,
                 plugin_autoload: bool, allow_tf32: bool, backend_source: str = "default_backend"):
        self.cache_dir = cache_dir
        self._num_threads = num_threads
        self._default_backend = (default_backend, backend_source)
        self.fastmath = fastmath
        self.plugin_autoload = plugin_autoload
        self.allow_tf32 = allow_tf32

    @classmethod
    def from_environment(cls) -> Settings:
        try:
            threads = _parse_threads(os.environ.get("FASTLORA_NUM_THREADS"), "FASTLORA_NUM_THREADS")
        except FastLoRAError as exc:
            threads = _Invalid(exc)
        return cls(
            cache_dir=_default_cache_dir(),
            num_threads=threads,
            default_backend=os.environ.get("FASTLORA_BACKEND", "auto").strip() or "auto",
            backend_source="FASTLORA_BACKEND",
            fastmath=_flag("FASTLORA_FASTMATH"),
            plugin_autoload=not _flag("FASTLORA_DISABLE_PLUGIN_AUTOLOAD"),
            allow_tf32=_flag("FASTLORA_ALLOW_TF32"),
        )

    @property
    def num_threads(self) -> int | None:
        """Numba threads (None: all usable cores); raises if FASTLORA_NUM_THREADS is malformed."""
        if isinstance(self._num_threads, _Invalid):
            raise self._num_threads.error
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value) -> None:
        self._num_threads = _parse_threads(value, "num_threads")

    @property
    def default_backend(self) -> str:
        """What ``backend="auto"`` means; raises if FASTLORA_BACKEND names no backend."""
        allowed = BACKEND_CHOICES
        value, source = self._default_backend
        if value not in allowed:
            raise FastLoRAError(f"{source}={value!r} is not a backend; choose one of {', '.join(map(repr, allowed))}")
        return value

    @default_backend.setter
    def default_backend(self, value: str) -> None:
        self._default_backend = (value, "default_backend")

    @property
    def numba_cache_dir(self) -> Path:
        return self.cache_dir / "numba"

    def compiled_code_root(self) -> str:
        """Where fastlora's own compiled code is cached: ``NUMBA_CACHE_DIR`` where the user set it, else
        :attr:`numba_cache_dir` (each kind of code in a folder named by its source's digest there)."""
        return os.environ.get("NUMBA_CACHE_DIR") or str(self.numba_cache_dir)


settings = Settings.from_environment()


def reset() -> None:
    """Restore every setting to its default (re-reading the environment)."""
    vars(settings).update(vars(Settings.from_environment()))


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


# cgroup (container) limits: v2, then v1; the kernel reports "no limit" as "max" or a huge number
_CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def available_memory_bytes() -> int | None:
    """Bytes this process may still allocate without swapping, or None where the OS does not say.

    psutil's ``virtual_memory().available`` (the OS's own estimate: MemAvailable on Linux), lowered
    to the container's cgroup memory limit minus its usage where that is smaller — psutil reports
    the host, and a container killed at its limit would never see the host's figure.
    """
    try:
        import psutil
        available = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or the platform unsupported: nothing to refuse by
        available = None
    for limit_file, usage_file in _CGROUP_FILES:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            room = max(limit - usage, 0)
            available = room if available is None else min(available, room)
            break
    return available


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} EB"  # pragma: no cover - unreachable


ALWAYS_ALLOWED_BYTES = 64 << 20


def require_memory(needed_bytes: float, what: str, advice: str) -> None:
    """Raise FastLoRAError when ``what`` needs more than :func:`available_memory_bytes`.

    ``needed_bytes`` is the caller's estimate of its peak allocation; ``advice`` says what
    to change.  Where the OS reports nothing, nothing is refused; below
    ``ALWAYS_ALLOWED_BYTES`` the OS is not asked (reading it costs ~40 µs, more than a
    small problem's whole draw).
    """
    if needed_bytes <= ALWAYS_ALLOWED_BYTES:
        return
    available = available_memory_bytes()
    if available is not None and needed_bytes > available:
        raise FastLoRAError(f"{what} needs about {format_bytes(needed_bytes)} of memory, but only "
                            f"{format_bytes(available)} is available on this machine; {advice}")
