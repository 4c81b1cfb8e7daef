"""Exceptions and argument validation shared by the whole package.

Every user-facing check raises :class:`FastLoRAError` (a ``ValueError``) whose message
names the offending argument and what is allowed, so that callers and the CLI can
report one readable line.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


class FastLoRAError(ValueError):
    """Invalid input or an impossible request; the message names the argument."""


class BackendUnavailableError(FastLoRAError):
    """The requested backend cannot run here (package, driver or device missing)."""


class StoreConflictError(FastLoRAError):
    """A results store holds rows of another spec (other keys, a changed or renamed spec)."""


class PluginError(FastLoRAError):
    """A PEFT parameterization plugin failed to load or violates the protocol."""


class DivergenceError(FastLoRAError, FloatingPointError):
    """An iteration produced a non-finite objective (step size too large, or ill-scaled data)."""


class PerformanceWarning(UserWarning):
    """A configuration that works but will run far slower than it should."""


class RegimeWarning(UserWarning):
    """Sweep points outside the theorem's regime of exact recovery (fastlora.regime)."""


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise FastLoRAError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
    return value


def check_choices(name: str, value: Any, allowed: Iterable[str]) -> tuple:
    """A name or an iterable of names, each one of ``allowed`` (as a tuple)."""
    allowed = list(allowed)
    if isinstance(value, str):
        values = (value,)
    else:
        try:
            values = tuple(value)
        except TypeError:
            raise FastLoRAError(f"{name} must be a name or a list of names from {', '.join(map(repr, allowed))}; "
                                f"got {value!r}") from None
    for one in values:
        check_choice(name, one, allowed)
    return values


def shown(value: Any) -> str:
    """``repr(value)`` for a message where it is one short line; a long string cut short; else the
    value's type (a SeedSequence's or an array's repr spans lines, a Generator's names an address)."""
    text = repr(value)
    if "\n" not in text and len(text) <= 80 and " at 0x" not in text:
        return text
    if isinstance(value, str):
        return repr(value[:60]) + "…"
    kind = type(value).__name__
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None,
              allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise FastLoRAError(f"{name} must be an integer, got {shown(value)}")
    value = int(value)
    if low is not None and value < low:
        raise FastLoRAError(f"{name}={value} is too small; it must be >= {low}")
    if high is not None and value > high:
        raise FastLoRAError(f"{name}={value} is too large; it must be <= {high}")
    return value


def check_float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise FastLoRAError(f"{name} must be a number, got {shown(value)}")
    value = float(value)
    if not np.isfinite(value):
        raise FastLoRAError(f"{name}={value} is not finite; it must be a finite number")
    if low is not None and (value < low or (low_open and value == low)):
        op = ">" if low_open else ">="
        raise FastLoRAError(f"{name}={value} is out of range; it must be {op} {low}")
    if high is not None and value > high:
        raise FastLoRAError(f"{name}={value} is out of range; it must be <= {high}")
    return value


def check_array(name: str, value: Any, *, ndim: int | None = None, shape: tuple | None = None,
                allow_empty: bool = False) -> np.ndarray:
    """Return ``value`` as a finite float64 numpy array of the expected shape.

    ``shape`` may hold ``None`` for free axes.  Complex input is refused (casting would
    silently drop the imaginary part), and so is an array with a zero-length axis unless
    ``allow_empty``.
    """
    if value is None:
        raise FastLoRAError(f"{name} must be a numeric array, got None")
    try:
        arr = np.asarray(value)
        if np.iscomplexobj(arr):
            raise FastLoRAError(f"{name} must be a real array, got complex values (dtype {arr.dtype})")
        arr = arr.astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, FastLoRAError):
            raise
        raise FastLoRAError(f"{name} must be a numeric array: {exc}") from None
    if ndim is not None and arr.ndim != ndim:
        raise FastLoRAError(f"{name} must be a {ndim}-d array, got shape {arr.shape}")
    if shape is not None and (arr.ndim != len(shape)
                              or any(s is not None and s != a for s, a in zip(shape, arr.shape))):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise FastLoRAError(f"{name} has shape {arr.shape}; expected {want}")
    if arr.size == 0 and not allow_empty:
        raise FastLoRAError(f"{name} is empty (shape {arr.shape}); every axis must have length >= 1")
    if arr.size and not np.isfinite(arr).all():
        raise FastLoRAError(f"{name} contains NaN or Inf values")
    return arr


def check_list(name: str, value, entries: str) -> list:
    """A list argument of the ``*_many`` functions, one entry per ``entries``; a single object
    (a problem, a result, a task) is refused rather than iterated."""
    if not isinstance(value, (list, tuple)):
        raise FastLoRAError(f"{name} must be a list (one entry per {entries}), got {type(value).__name__}")
    return list(value)


# what the *_many functions do with an entry that fails: raise it, or return it in its place
ERRORS_CHOICES = ("raise", "return")


def each_or_error(calls, errors: str) -> list:
    """Each of ``calls`` (functions of no argument) run in order: its result, or where it raises a
    FastLoRAError, that error raised (``errors="raise"``) or put in its place (``"return"``)."""
    out = []
    for call in calls:
        try:
            out.append(call())
        except FastLoRAError as exc:
            if errors == "raise":
                raise
            out.append(exc)
    return out


def check_representable(name: str, values, dtype) -> None:
    """Refuse finite float64 ``values`` that a narrower ``dtype`` cannot hold: entries that overflow it,
    or nonzero values all below its normal range (they would flush to zero: a solve would then
    "converge" at 0).  Nothing to check where ``dtype`` is float64."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return
    values = np.asarray(values)
    if not values.size or not np.isfinite(values).all():
        return
    largest = float(np.abs(values).max())
    info = np.finfo(dtype)
    if largest > float(info.max) or 0 < largest < float(info.tiny):
        raise FastLoRAError(f"dtype={dtype.name!r}: {name} (largest |entry| {largest:.3g}) fall outside its range "
                            f"({float(info.tiny):.3g} to {float(info.max):.3g}); use dtype='float64' or rescale "
                            f"X and Y")


def per_entry(name: str, value, count: int, entry: str) -> list:
    """``value`` for each of ``count`` entries (``entry``: what one is, e.g. "problem"): one value
    for all, or a list, tuple or array of one per entry."""
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * count
    if len(values) != count:
        raise FastLoRAError(f"{name} has {len(values)} entries for {count} {entry}s; give one for all or one per "
                            f"{entry}")
    return values


def check_output_folder(path, label: str) -> None:
    """Outputs go into existing folders: a mistyped path must not create a tree of folders.
    ``label`` names the argument in the message (e.g. "out='r.sqlite'" or "--out 'r.sqlite'")."""
    from pathlib import Path
    folder = Path(path).expanduser().parent
    if not folder.is_dir():
        raise FastLoRAError(f"{label}: folder {str(folder)!r} does not exist; create it first")
