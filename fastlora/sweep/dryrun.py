"""``fastlora sweep SPEC --dry-run``: what a sweep would do, before doing it.

Counts the spec's rows (and, with a store, those already in it), the distinct retrainings the
pending rows need (rows that differ only in evaluation keys share one per seed), the points outside
the theorem's regime (fastlora.regime), an estimate of one row's peak memory, and the time: a few
retrainings are run for real (one seed's rows, then — where that is quick — ``TIMED_SEEDS`` seeds'
rows together, as a sweep's chunks run them; after one untimed warm-up row, the smallest retraining
key of each method and model, then each one's largest, then other large keys while ``TIME_BUDGET``
seconds last, up to ``TIMED_KEYS`` keys), and every other retraining key is estimated from its kind's timed ones along a
rough size (:func:`_cost_proxy`): a fixed plus a proportional cost where two sizes of the kind were
timed (:func:`_cost_model`).  Compiling (an empty kernel cache) is left out of the timings.  Nothing is
written.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import format_bytes, usable_cores
from .spec import DEFAULT_PAIRING, POPULATION, Spec, retraining_key

TIMED_KEYS = 4
TIME_BUDGET = 20.0  # seconds of timed rows at most (one retraining key may exceed it alone)
TIMED_SEEDS = 16  # a timed key whose seeds' rows take at most BATCH_SECONDS together is timed as one chunk of them
BATCH_SECONDS = 2.0


@dataclass
class DryRun:
    """What a sweep of ``spec`` would do (module docstring); ``lines()`` is the CLI's report."""

    name: str
    points: int
    rows: int
    pending: int
    retrainings: int
    outside: list = field(default_factory=list)  # (point description, reasons) of points outside the regime
    row_bytes: int = 0
    workers: int = 1
    timed: list = field(default_factory=list)  # (retraining key's description, seconds of one seed's rows)
    estimate_seconds: float = 0.0
    pairing: str = ""
    store: str | None = None
    untimed: str | None = None  # why nothing was timed (a cluster runs the rows)

    def lines(self) -> list[str]:
        where = f" ({self.rows - self.pending} already in {self.store})" if self.store else ""
        out = [f"dry run of sweep {self.name!r}: {self.points} point(s), {self.rows} row(s){where}, "
               f"{self.pending} to run; {self.retrainings} distinct retraining(s); pairing {self.pairing!r}"]
        out.append(f"outside the theorem's regime: {len(self.outside)} point(s)"
                   + (":" if self.outside else ""))
        out.extend(f"  {where}: {why}" for where, why in self.outside[:8])
        if len(self.outside) > 8:
            out.append(f"  ... and {len(self.outside) - 8} more")
        out.append(f"memory: ~{format_bytes(self.row_bytes)} per row at the largest point; "
                   f"~{format_bytes(self.row_bytes * self.workers)} with {self.workers} worker(s)")
        for desc, seconds in self.timed:
            shown = _duration(seconds) if seconds < _MILLISECONDS_BELOW else f"{seconds:.2f} s"
            out.append(f"timed: {desc}: {shown} per retraining (its rows included)")
        if self.untimed:
            out.append(f"not timed: {self.untimed}")
        elif self.pending:
            wall = self.estimate_seconds / max(self.workers, 1)
            out.append(f"estimate: ~{_duration(self.estimate_seconds)} of work, ~{_duration(wall)} on "
                       f"{self.workers} worker(s) (untimed retraining keys estimated from the timed ones of their "
                       f"method by their size; a rough guide)")
        return out


def dry_run(spec: Spec, out=None, workers: int | None = None, time_budget: float = TIME_BUDGET,
            timed_keys: int = TIMED_KEYS, scheduler: str | None = None, append: bool = False,
            retry_errors: bool = False) -> DryRun:
    """The :class:`DryRun` of ``spec`` (against the store at ``out`` where given; read-only: what the run
    would refuse there is refused, ``append`` and ``retry_errors`` as for the run).  With a Dask
    ``scheduler`` the rows would run on the cluster's machines: nothing is timed here, and a backend this
    machine lacks is not refused (as the run does)."""
    from ..regime import point_regime
    from .runner import check_backends_here
    from .store import EmptyStoreError, ResultsStore, WriterLock
    if not scheduler:
        check_backends_here(spec)  # as the run refuses them: the dry run times rows on this machine
    stored, in_store = {}, out is not None and Path(out).is_file()
    if out is not None:
        WriterLock.check_free(Path(out))
    if in_store:  # one read-only open (each runs SQLite's quick_check)
        try:
            with ResultsStore(out) as store:
                rule = store.pairing()
                rows = spec.rows(rule)
                stored = store.stored_rows()
                store.check_run(spec, rows, stored, append)
        except EmptyStoreError:  # an empty database: the run makes it a store
            in_store = False
    if not in_store:
        rule = spec.pairing or DEFAULT_PAIRING
        rows = spec.rows(rule)
    points = spec.points()
    pending = [r for r in rows if r["row_key"] not in stored or (retry_errors and stored[r["row_key"]][1] == "error")]
    groups: dict[str, dict[int, list]] = {}
    for row in pending:
        groups.setdefault(retraining_key(row["point"]), {}).setdefault(row["seed"], []).append(row)
    outside = []
    for point in points:
        inside, note = point_regime(point)
        if inside is False:
            outside.append((_describe(point), note))
    workers = max(1, min(workers or usable_cores(), max(len(pending), 1)))
    report = DryRun(name=spec.name, points=len(points), rows=len(rows), pending=len(pending),
                    retrainings=sum(len(by_seed) for by_seed in groups.values()), outside=outside,
                    row_bytes=max((row_bytes(p) for p in points), default=0), workers=workers, pairing=rule,
                    store=str(out) if in_store else None)
    if scheduler:
        report.untimed = f"the rows would run on the cluster at {scheduler}, not on this machine"
    elif groups:
        report.timed, report.estimate_seconds = _time(groups, time_budget, timed_keys)
    return report


def row_bytes(point: dict) -> int:
    """Estimated peak memory of one row: the problem and its solve (linear model: make_problem's and
    retrain's own estimates), or the shallow network's data and gradients."""
    if point.get("dataset") is not None:
        return 64 << 20  # a few MB of images and a 64-unit network
    d, k, T = point["d"], point.get("k", 2), point.get("T", 8)
    n = None if point.get("n", POPULATION) == POPULATION else point["n"]
    if point.get("model") == "shallow":
        return int(8 * (T + point.get("n_test_tasks", 4)) * (n or 1) * (d + 2) * 4) + (16 << 20)
    from ..problems import problem_bytes
    from ..sizing import solve_bytes
    from ..taskbatch import is_small
    d_out = point.get("d_out") or d
    kind = "finite" if n is not None else ("dense" if is_small(d_out, d) else "factored")
    dtype = point.get("dtype", "float64")
    return problem_bytes(d, d_out, k, T, n, point.get("n_test_tasks", 4), point.get("symmetric", True),
                         point.get("sampler", "raw")) + solve_bytes(kind, T, d_out, d, k, point.get("rank"), dtype)


def _cost_proxy(point: dict) -> float:
    """A rough size of one retraining and its rows, to extrapolate timed keys to others of their kind:
    T·(n·d_in·d_out + d³) for finite samples, T·d³ in population mode, T·n·d² for the shallow network;
    times the starts (restarts, census starts)."""
    d = float(point.get("d", 64))
    d_out = float(point.get("d_out") or d)
    T = float(point.get("T", 8))
    n = point.get("n", POPULATION)
    if point.get("dataset") is not None:
        size = 1.0
    elif point.get("model") == "shallow":
        size = T * float(n) * d * d
    elif n == POPULATION:
        size = T * d * d * d
    else:
        size = T * (float(n) * d * d_out + d ** 3)
    return size * float(point.get("restarts") or 1) * float(point.get("n_starts") or 1)


def _time(groups: dict, budget: float, most: int) -> tuple[list, float]:
    """Run the rows of up to ``most`` retraining keys — the smallest of each kind (method, model) first,
    then each kind's largest, then the other large ones while ``budget`` lasts — and extrapolate to every
    pending retraining along each kind's timed ones (:func:`_cost_model`; module docstring)."""
    from .runner import run_rows
    proxy = {key: _cost_proxy(_first_point(by_seed)) for key, by_seed in groups.items()}
    kind = {key: _kind(_first_point(by_seed)) for key, by_seed in groups.items()}
    ascending = sorted(groups, key=lambda key: proxy[key])
    smallest = list({kind[key]: key for key in reversed(ascending)}.values())  # each kind's smallest
    largest = [key for key in {kind[key]: key for key in ascending}.values() if key not in smallest]
    others = [key for key in reversed(ascending) if key not in smallest and key not in largest]
    run_rows(next(iter(groups[ascending[0]].values()))[:1])  # warm-up: imports, compiled kernels from the cache
    measured: dict[str, float] = {}
    spent = 0.0
    for key in (smallest + largest + others)[:max(most, len(smallest))]:
        if spent >= budget and key not in smallest:
            break
        by_seed = list(groups[key].values())
        measured[key] = _seconds(run_rows, by_seed[0])
        spent += measured[key]
        # a sweep runs a key's rows in chunks of many seeds, retrained and evaluated together: time
        # such a chunk where it is cheap (one seed's rows alone cost several times their share)
        batch = by_seed[1:1 + TIMED_SEEDS]
        if len(batch) > 1 and measured[key] * len(batch) <= BATCH_SECONDS:
            seconds = _seconds(run_rows, [row for rows in batch for row in rows])
            measured[key] = seconds / len(batch)
            spent += seconds
    timed = [(_describe(_first_point(groups[key])), seconds) for key, seconds in measured.items()]
    models = {}
    for key, seconds in measured.items():
        models.setdefault(kind[key], []).append((proxy[key], seconds))
    models = {k: _cost_model(points) for k, points in models.items()}
    total = sum((measured[key] if key in measured else models[kind[key]](proxy[key])) * len(by_seed)
                for key, by_seed in groups.items())
    return timed, total


def _cost_model(points: list):
    """Seconds of one retraining as a function of its cost proxy, from timed (proxy, seconds) pairs of one
    kind: a fixed cost plus a proportional one (least squares, neither negative) where two or more
    sizes were timed — a sweep row has a fixed overhead that proportional scaling would multiply — else
    proportional to the one timed."""
    x = np.array([p for p, _ in points], dtype=np.float64)
    y = np.array([s for _, s in points], dtype=np.float64)
    if len(set(x.tolist())) < 2:
        rate = float(np.median(y / x))
        return lambda size: rate * size
    slope, fixed = np.polyfit(x, y, 1)
    if slope < 0:  # the larger sizes were timed faster (noise): their mean
        slope, fixed = 0.0, float(y.mean())
    elif fixed < 0:  # no fixed part: proportional, through the origin
        slope, fixed = float(x @ y / (x @ x)), 0.0
    return lambda size: fixed + slope * size


def _first_point(by_seed: dict) -> dict:
    return next(iter(by_seed.values()))[0]["point"]


def _kind(point: dict) -> tuple:
    return point.get("method", "lora-ml"), point.get("model", "linear"), point.get("dataset")


def _describe(point: dict) -> str:
    keys = ("dataset", "model", "method", "d", "k", "T", "n", "rank", "n_starts")
    return ", ".join(f"{k}={point[k]}" for k in keys if point.get(k) is not None
                     and not (k == "model" and point[k] == "linear")
                     and not (k == "rank" and point.get("method") != "lora-ml"))


def _seconds(run_rows, rows: list) -> float:
    """Seconds ``run_rows(rows)`` takes, less any compiling it did (fastlora.compilation.first_run_seconds:
    with an empty kernel cache a kind's first rows compile for 10-30 s, once a sweep, not once a retraining)."""
    from ..compilation import first_run_seconds
    compiling, started = first_run_seconds(), time.perf_counter()
    run_rows(rows)
    return max(time.perf_counter() - started - (first_run_seconds() - compiling), 0.0)


# sweep rows take milliseconds: "0 s" said nothing (from 999.5 ms, "1 s")
_MILLISECONDS_BELOW = 0.9995


def _duration(seconds: float) -> str:
    if seconds < _MILLISECONDS_BELOW:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
