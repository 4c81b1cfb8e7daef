"""One benchmark case: a call timed over rounds, the figures it reports, and the reference
(measured in the same run) whose median is its unit — the machine-independent score.

``fastlora bench`` times a case with :func:`measure`; the pytest-benchmark suite
(``bench/bench_solvers.py``) hands the same ``call`` to pytest-benchmark's fixture.
"""
from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Lookup = Callable[[str], "Measured | None"]


@dataclass
class Case:
    config: str
    backend: str
    variant: str
    call: Callable[[], Any]            # one round, as pytest-benchmark's fixture times it
    rounds: int
    params: dict = field(default_factory=dict)
    reference: str | None = None       # name of the case whose median is this case's unit
    unit: str = ""                     # a reference's own unit, e.g. "one 128x128x64 float64 GEMM"
    warmup: int = 1
    # a round's figure in seconds from (the call's return, its wall time); default: the wall time
    seconds_of: Callable[[Any, float], float] | None = None
    # extra_info from (median seconds, the last call's return, a lookup of other cases' results)
    figures: Callable[[float, Any, Lookup], dict] | None = None
    per: str = "call"                  # what one round's seconds are for: call, iteration, row, ...
    calibrate: bool = False            # call it several times a round, as pytest-benchmark does for short calls
    iterations: int = 1                # calls per round (set by calibration)
    warmup_call: Callable[[], Any] | None = None  # a cheaper warm-up (compile, load kernels) than ``call``

    @property
    def name(self) -> str:
        return case_name(self.config, self.backend, self.variant)

    @property
    def param(self) -> str:
        return f"{self.backend}-{self.variant}"


def case_name(config: str, backend: str, variant: str) -> str:
    return f"{config}[{backend}-{variant}]"


@dataclass
class Measured:
    case: Case
    data: list[float]                  # seconds of each timed round
    extra_info: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.data)

    @property
    def unit_seconds(self) -> float:
        """As a reference, a floor: the fastest round (robust to a shared machine's stalls)."""
        return min(self.data)


MIN_ROUND_SECONDS = 2e-3  # a calibrated round lasts at least this (timer and scheduler noise)
REFERENCE_ROUNDS = 7      # at least, for a reference: its unit is the fastest round


def warm_up(case: Case) -> None:
    """The case's warm-up calls, then (``calibrate``) its calls per round."""
    for _ in range(case.warmup):
        (case.warmup_call or case.call)()
    if case.calibrate:
        started = time.perf_counter()
        case.call()
        once = time.perf_counter() - started
        case.iterations = max(1, min(10_000, int(MIN_ROUND_SECONDS / max(once, 1e-9)) + 1))


def round_seconds(case: Case, out, wall: float) -> float:
    """A round's figure: the case's own (per iteration, per row, ...) or the wall time of one call."""
    return case.seconds_of(out, wall) if case.seconds_of else wall


def finish(case: Case, data: list[float], last, lookup: Lookup) -> Measured:
    result = Measured(case, data)
    if case.figures is not None:
        result.extra_info.update(case.figures(result.median, last, lookup))
    return result


def timed_rounds(case: Case) -> tuple[list[float], Any]:
    """(seconds of each of ``case.rounds`` rounds, the last call's return)."""
    data, last = [], None
    for _ in range(case.rounds):
        started = time.perf_counter()
        for _ in range(case.iterations):
            last = case.call()
        data.append(round_seconds(case, last, (time.perf_counter() - started) / case.iterations))
    return data, last


def measure(case: Case, lookup: Lookup = lambda name: None) -> Measured:
    """Warm up, then time ``case.rounds`` rounds; the figures use the median."""
    warm_up(case)
    return finish(case, *timed_rounds(case), lookup)


def lazy(fn):
    """A zero-argument function computed on first call and cached (set-up shared by a config's cases)."""
    return functools.cache(fn)


def gemm_case(config: str, backend, d: int, width: int, dtype: str, rounds: int) -> Case:
    """The seconds of one (width × d) @ (d × d) GEMM — the solvers' shape — on ``backend``'s array
    module.  Past ``GEMM_FLOPS`` the product is timed at a narrower width and scaled (the rate of a
    GEMM that size is flat in its width)."""
    timed = max(1, min(width, int(GEMM_FLOPS / (2 * d * d))))

    @lazy
    def operands():
        rng = np.random.default_rng(0)
        return (backend.asarray(rng.standard_normal((timed, d)), dtype),
                backend.asarray(rng.standard_normal((d, d)), dtype))

    def call():
        X, D = operands()
        out = X @ D
        backend.synchronize()
        return out

    how = "" if timed == width else f" (timed at width {timed}, scaled)"
    return Case(config, "numpy" if backend.xp is np else backend.name, "gemm", call, max(rounds, REFERENCE_ROUNDS),
                params={"width": width}, calibrate=True, unit=f"one {d}x{d}x{width} {dtype} GEMM{how}",
                seconds_of=lambda out, wall: wall * width / timed,
                figures=lambda median, out, lookup: {"gemm_gflops": 2.0 * d * d * width / median / 1e9})


GEMM_FLOPS = 4e9  # the largest GEMM a reference times in one round (~0.1 s on a laptop core)


def draw_case(config: str, shape: tuple, rounds: int, what: str) -> Case:
    """numpy drawing ``2 × prod(shape)`` standard normals (inputs and noise): making a point's data, the unit of
    the per-row figures (fastlora's own compiled draws of them: :func:`keyed_draw_case`)."""
    rng = np.random.default_rng(0)
    count = 2 * int(np.prod(shape))
    return Case(config, "numpy", "draw-data",
                lambda: (rng.standard_normal(shape), rng.standard_normal(shape)), max(rounds, REFERENCE_ROUNDS),
                params={"normals": count}, calibrate=True, unit=f"drawing {what} ({count:,} normals)")


def keyed_draw_case(config: str, shape: tuple, rounds: int, reference: str) -> Case | None:
    """The same ``2 × prod(shape)`` normals as :func:`draw_case`, drawn as fastlora draws a raw row's data: one
    keyed stream per task (shape[0] of them; fastlora.seeding.keyed_streams, compiled), in units of
    ``reference`` (numpy's draw); None where the keyed streams do not run (no Numba)."""
    try:
        import numba  # noqa: F401 - keyed streams run in a process with Numba loaded
    except ImportError:
        return None
    from ..seeding import KeyedSeed, keyed_streams
    inputs, noise = np.empty(shape), np.empty(shape)
    sources = [KeyedSeed(0, (1, task, 1)) for task in range(shape[0])]
    if keyed_streams(sources, 0) is None:
        return None
    return Case(config, "numba", "draw-data", lambda: keyed_streams(sources, 0).fill(inputs, noise),
                max(rounds, REFERENCE_ROUNDS), params={"normals": 2 * int(np.prod(shape))}, calibrate=True,
                reference=reference, per="drawing the same normals")
