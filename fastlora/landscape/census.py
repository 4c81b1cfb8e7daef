"""A census of where LoRA-ML solvers land: many random starts, each solved and classified.

Start i draws from ``numpy.random.SeedSequence(seed, spawn_key=(i,))``, so a census is
deterministic and its first m starts do not depend on how many were asked for.
Initialisation laws (every entry independent, ``scale`` = ``init_scale``):

* ``"normal"``   — A and every adapter entry ~ N(0, scale²) (the paper's N(0, 0.1²)).
* ``"uniform"``  — entries ~ U[−scale, scale].
* ``"standard"`` — A = the standard retraining solution argmin_A Σ_t L_t(A); adapters ~ N(0, scale²).

Every start is counted: an endpoint of each kind of :mod:`fastlora.landscape.classify`,
or ``"failed"`` when the solve or the classification raised a numerical error.

With a ground truth (a Problem's ``A_star``) every start also records its ``rel_err_A`` and whether
it recovers A* (``recovers_A``: rel_err_A within :func:`fastlora.identify.identification_tolerance`),
so "global" splits into global minima that recover A* and those that do not (rank r > k, T ≤ 2, ...):
``CensusResult.global_split`` and the table's two "global" sub-rows.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..config import require_memory
from ..errors import DivergenceError, FastLoRAError, check_choice, check_float, check_int
from ..options import OPTIONS, rank_or_problem_k
from ..seeding import stream
from ..tables import render
from .classify import KINDS, Tolerances, classify_at, global_reference, realisable_global_value
from .hessian import spectrum_at
from .objective import LandscapeModel, Point

INITS = OPTIONS["census_init"].choices
GLOBAL_RECOVERS, GLOBAL_OTHER = "of which A = A*", "of which A ≠ A*"
CENSUS_KINDS = (*KINDS, "failed")
SOLVERS = OPTIONS["solver"].choices  # "auto": gd (L-BFGS), which reaches stationary points to classify
_NUMERICAL_ERRORS = (DivergenceError, FloatingPointError, ArithmeticError, np.linalg.LinAlgError)


@dataclass
class CensusResult:
    """Outcome of :func:`census`.

    ``counts``: kind -> number of starts (every kind of ``CENSUS_KINDS``; they add up to
    ``n_starts``); ``records``: one dict per start (start, kind, objective, excess = F −
    F_global, grad_norm, min_eig, max_eig, n_iter, converged, solve_seconds,
    classify_seconds, error, rel_err_A, recovers_A); ``global_value`` and ``global_source`` (how it was obtained);
    ``settings``: the census arguments; ``solve_seconds`` / ``classify_seconds`` /
    ``reference_seconds`` (finding the global value): totals.  Solves and classification run
    with one BLAS thread: on problems this small, more threads only contend.
    """

    counts: dict
    records: list = field(repr=False)
    global_value: float
    global_source: str
    settings: dict
    solve_seconds: float
    classify_seconds: float
    reference_seconds: float = 0.0

    @property
    def n_starts(self) -> int:
        return len(self.records)

    def fraction(self, kind: str) -> float:
        check_choice("kind", kind, CENSUS_KINDS)
        return self.counts[kind] / self.n_starts

    @property
    def global_split(self) -> dict:
        """The global minima split by whether they recover A*: {"recovers A*": n, "A ≠ A*": m}
        (both 0 without a ground truth: every global start's ``recovers_A`` is None)."""
        found = [r["recovers_A"] for r in self.records if r["kind"] == "global"]
        return {GLOBAL_RECOVERS: sum(v is True for v in found), GLOBAL_OTHER: sum(v is False for v in found)}

    def summary(self) -> list[dict]:
        """Per kind: count, fraction, min / median / max of the objective, of λ_min and of rel_err_A;
        after "global", its split by whether A* is recovered (where there is a ground truth)."""
        rows = []
        for kind in CENSUS_KINDS:
            recs = [r for r in self.records if r["kind"] == kind]
            rows.append(self._summary_row(kind, recs))
            if kind == "global" and any(r["recovers_A"] is not None for r in recs):
                for label, wanted in ((f"  {GLOBAL_RECOVERS}", True), (f"  {GLOBAL_OTHER}", False)):
                    rows.append(self._summary_row(label, [r for r in recs if r["recovers_A"] is wanted]))
        return rows

    def _summary_row(self, kind: str, recs: list) -> dict:
        row = {"kind": kind, "count": len(recs), "fraction": len(recs) / max(self.n_starts, 1)}
        for key in ("objective", "min_eig", "rel_err_A"):
            values = np.array([r[key] for r in recs if np.isfinite(r[key])])
            for stat, fn in (("min", np.min), ("median", np.median), ("max", np.max)):
                row[f"{key}_{stat}"] = float(fn(values)) if values.size else None
        return row

    def table(self) -> str:
        s = self.settings
        head = (f"census: {self.n_starts} starts, peft={s['peft']}, rank={s['rank']}, init={s['init']} "
                f"(scale {s['init_scale']}), solver={s['solver']}"
                f"{'/' + s['optimizer'] if s['solver'] == 'gd' else ''}, seed={s['seed']}\n"
                f"global value {self.global_value:.6g} ({self.global_source}); "
                f"time: solve {self.solve_seconds:.2f} s, reference {self.reference_seconds:.2f} s, "
                f"classify {self.classify_seconds:.2f} s")
        return head + "\n" + render(self.summary())

    __str__ = table

    def to_frame(self):
        """The records as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise FastLoRAError("to_frame() needs pandas; install it or use .records") from None
        return pd.DataFrame(self.records)

    def to_dict(self) -> dict:
        """Everything as plain JSON-ready values (NaN becomes None)."""
        return _json_ready({"counts": self.counts, "global_value": self.global_value,
                            "global_source": self.global_source, "settings": self.settings,
                            "solve_seconds": self.solve_seconds, "classify_seconds": self.classify_seconds,
                            "reference_seconds": self.reference_seconds, "summary": self.summary(),
                            "records": self.records})


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def draw_starts(model: LandscapeModel, n_starts: int, init: str, init_scale: float, seed: int) -> list[Point]:
    """``n_starts`` starting points (A, θ) from the law ``init`` (see the module docstring)."""
    standard = model.standard_solution() if init == "standard" else None
    starts = []
    for i in range(n_starts):
        rng = stream(seed, (i,))
        A = np.array(standard, dtype=np.float64) if standard is not None else \
            _draw(rng, init, init_scale, (model.d_out, model.d_in))
        starts.append(Point(A, {name: _draw(rng, init, init_scale, model.shapes[name])
                                for name in model.param_names}))
    return starts


def one_blas_thread():
    """A context with one BLAS thread: on problems this small, more threads only contend
    (and scipy's L-BFGS-B slows down many times over on a loaded machine)."""
    import scipy.optimize  # noqa: F401 - loads the BLAS that L-BFGS-B uses, so that the limit applies to it
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _draw(rng, init: str, scale: float, shape) -> np.ndarray:
    if init == "uniform":
        return rng.uniform(-scale, scale, size=shape)
    return scale * rng.standard_normal(shape)


_CHUNK = 128  # starts per batched solve: the progress callback moves between chunks


def solve_starts(problem_or_tasks, peft, rank: int, starts: list[Point], solver: str, *, optimizer: str,
                  max_iter: int, tol: float, backend: str, callback: Callable | None = None) -> list:
    """Solve LoRA-ML from every start: a list of RetrainResult, or the numerical error a start raised.

    Starts are solved together by :func:`fastlora.retrain_many` (the same problem repeated, one
    start per copy: every operation is per start, so each result is what a lone solve from that
    start gives); a start that fails is its error, the others go on.
    """
    import numpy as np

    import fastlora as fl

    options = {"optimizer": optimizer} if solver == "gd" else {}
    out = []
    for first in range(0, len(starts), _CHUNK):
        chunk = starts[first:first + _CHUNK]
        init_A = np.stack([start.A for start in chunk])
        init_params = {k: np.concatenate([start.params[k] for start in chunk]) for k in chunk[0].params}
        results = fl.retrain_many([problem_or_tasks] * len(chunk), method="lora-ml", peft=peft, rank=rank,
                                  solver=solver, backend=backend, max_iter=max_iter, tol=tol, seeds=0,
                                  init_A=init_A, init_params=init_params, errors="return", **options)
        out.extend(r if not isinstance(r, Exception) or isinstance(r, _NUMERICAL_ERRORS) else _reraise(r)
                   for r in results)
        if callback is not None:
            callback(len(out), len(starts))
    return out


def _reraise(exc):
    raise exc


def census(problem_or_tasks, peft=OPTIONS["peft"].default, rank: int | None = None, n_starts: int = 100,
           init: str = OPTIONS["census_init"].default, init_scale: float = OPTIONS["init_scale"].default,
           solver: str = "gd", optimizer: str | None = None, seed: int = 0, *,
           max_iter: int | None = None, tol: float | None = None, backend: str = "auto",
           global_value: float | None = None, tolerances: Tolerances | None = None,
           callback: Callable | None = None) -> CensusResult:
    """Solve LoRA-ML from ``n_starts`` random starts and classify every endpoint.

    ``problem_or_tasks``: a Problem or list of Tasks; ``peft``: "lora_sym" | "lora";
    ``rank``: default the problem's k; ``init``/``init_scale``: the law of the starts (module
    docstring); ``solver``: "gd" (with ``optimizer`` "lbfgs" (default) | "gd" | "adam"), "als", or
    "auto" (= "gd": L-BFGS reaches the stationary points the census classifies);
    ``max_iter``, ``tol``, ``backend``: passed to :func:`fastlora.retrain` (its defaults: 1000, 1e-10,
    "auto"); ``n_starts`` at most ``fastlora.options.MAX_STARTS``; ``global_value``:
    F at a global minimum if known (default: 0 for realisable population problems, else the
    lowest of a reference L-BFGS solve's objective and every objective the census reached);
    ``tolerances``: :class:`Tolerances` of the classification; ``callback(done, total)``
    after each solved start.
    """
    n_starts = OPTIONS["n_starts"].check(n_starts)
    if n_starts is None:
        raise FastLoRAError("n_starts must be an integer >= 1, got None")
    max_iter = OPTIONS["max_iter"].resolve(max_iter, "retrain", "linear")
    tol = OPTIONS["tol"].resolve(tol, "retrain", "linear")
    init = OPTIONS["census_init"].check_as("init", init)
    init_scale = OPTIONS["init_scale"].check(init_scale)
    solver = OPTIONS["solver"].check(solver)
    if solver == "auto":
        solver = "gd"
    if solver == "gd":
        optimizer = OPTIONS["optimizer"].check("lbfgs" if optimizer is None else optimizer)
    elif optimizer is not None:
        raise FastLoRAError(f"optimizer={optimizer!r} applies to solver='gd' only; solver='als' has none")
    seed = check_int("seed", seed, low=0)
    global_value = check_float("global_value", global_value, low=0.0, allow_none=True)  # F is a sum of losses
    rank = OPTIONS["rank"].check(rank_or_problem_k(rank, problem_or_tasks))
    tol_cls = tolerances or Tolerances()
    model = LandscapeModel(problem_or_tasks, peft, rank)
    if rank > min(model.d_out, model.d_in):
        raise FastLoRAError(f"rank={rank} is too large; it must be <= min(d_out, d_in) = "
                            f"{min(model.d_out, model.d_in)}")
    per_start = 8 * model.dim
    require_memory(3 * n_starts * per_start, f"a census of n_starts={n_starts} starts",
                   "use fewer starts (a census of a few hundred classifies the landscape)")
    starts = draw_starts(model, n_starts, init, init_scale, seed)
    with one_blas_thread():
        started = time.perf_counter()
        outcomes = solve_starts(problem_or_tasks, model.peft, rank, starts, solver, optimizer=optimizer,
                                 max_iter=max_iter, tol=tol, backend=backend, callback=callback)
        solve_seconds = time.perf_counter() - started

        started = time.perf_counter()
        endpoints = [None if isinstance(o, BaseException) else Point(np.asarray(o.A), dict(o.params))
                     for o in outcomes]
        global_value, source = _global_value(problem_or_tasks, model, global_value, endpoints)
        reference_seconds = time.perf_counter() - started

        started = time.perf_counter()
        truth = _ground_truth(problem_or_tasks)
        records = [_record(i, model, outcome, point, global_value, tol_cls, truth)
                   for i, (outcome, point) in enumerate(zip(outcomes, endpoints))]
        counts = {kind: sum(r["kind"] == kind for r in records) for kind in CENSUS_KINDS}
        classify_seconds = time.perf_counter() - started
    settings = {"peft": model.peft.name, "rank": rank, "n_starts": n_starts, "init": init, "init_scale": init_scale,
                "solver": solver, "optimizer": optimizer if solver == "gd" else None, "seed": seed,
                "max_iter": max_iter, "tol": tol, "T": model.T, "d_out": model.d_out, "d_in": model.d_in,
                "population": model.is_population}
    return CensusResult(counts=counts, records=records, global_value=global_value, global_source=source,
                        settings=settings, solve_seconds=solve_seconds, classify_seconds=classify_seconds,
                        reference_seconds=reference_seconds)


def _global_value(problem_or_tasks, model, given, endpoints) -> tuple[float, str]:
    if given is not None:
        return given, "given"
    known = realisable_global_value(model)
    if known is not None:
        return known, "realisable: exact fit exists"
    reference = global_reference(problem_or_tasks, model.peft, model.rank, model=model)
    reached = [v for v in (model.value(p) for p in endpoints if p is not None) if np.isfinite(v)]
    if reached and min(reached) < reference:
        return float(min(reached)), "lowest objective reached by the census"
    return reference, "reference L-BFGS solve"


def _ground_truth(problem_or_tasks):
    """(A* dense, ‖A*‖_F, identification tolerance) of a problem with a ground truth, else None."""
    A_star = getattr(problem_or_tasks, "A_star", None)
    if not isinstance(A_star, np.ndarray):
        return None
    from ..identify import identification_tolerance
    return A_star, float(np.linalg.norm(A_star)), identification_tolerance(problem_or_tasks)


def _record(i, model, outcome, point, global_value, tol, truth=None) -> dict:
    rec = {"start": i, "kind": "failed", "objective": np.nan, "excess": np.nan, "grad_norm": np.nan,
           "min_eig": np.nan, "max_eig": np.nan, "n_iter": 0, "converged": False, "solve_seconds": np.nan,
           "classify_seconds": 0.0, "error": "", "rel_err_A": np.nan, "recovers_A": None}
    if isinstance(outcome, BaseException):
        rec["error"] = f"{type(outcome).__name__}: {outcome}"
        return rec
    rec.update(n_iter=int(outcome.n_iter), converged=bool(outcome.converged), solve_seconds=float(outcome.seconds))
    if truth is not None:
        A_star, norm, id_tol = truth
        rec["rel_err_A"] = float(np.linalg.norm(np.asarray(point.A) - A_star) / norm)
        rec["recovers_A"] = bool(rec["rel_err_A"] <= id_tol)
    started = time.perf_counter()
    try:
        spectrum = spectrum_at(model, point, k_eigs=1)
        c = classify_at(model, point, global_value, tol, spectrum)
    except _NUMERICAL_ERRORS as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
    else:
        rec.update(kind=c.kind, objective=c.objective, excess=c.objective - global_value, grad_norm=c.grad_norm,
                   min_eig=c.min_eig, max_eig=c.max_eig)
    rec["classify_seconds"] = time.perf_counter() - started
    return rec


def landscape_metrics(problem, *, n_starts: int, rank: int | None = None, peft="lora_sym", init: str = "normal",
                      init_scale: float = 0.1, seed: int = 0, solver: str = "gd", optimizer: str | None = None,
                      backend: str = "auto") -> dict:
    """Census metrics of one sweep point (a :func:`census` with these arguments).

    ``spurious_fraction``, ``saddle_fraction``, ``global_fraction``: fractions of the starts
    whose endpoint is of that kind; ``global_identified_fraction`` and
    ``global_unidentified_fraction`` split the global fraction into minima that recover A* and
    those that do not (NaN without a ground truth).  ``min_hessian_eig``: the smallest projected
    Hessian eigenvalue over the endpoints that are minima (global or spurious) — ≈ 0 where the
    global minima are not isolated modulo symmetry (T = 2), > 0 where they are (T ≥ 3);
    NaN when no start ended at a minimum.
    """
    result = census(problem, peft=peft, rank=rank, n_starts=n_starts, init=init, init_scale=init_scale,
                    solver=solver, optimizer=optimizer, seed=seed, backend=backend)
    minima = [r["min_eig"] for r in result.records if r["kind"] in ("global", "spurious")]
    split = result.global_split
    judged = any(r["recovers_A"] is not None for r in result.records)
    return {"spurious_fraction": result.fraction("spurious"), "saddle_fraction": result.fraction("saddle"),
            "global_fraction": result.fraction("global"),
            "global_identified_fraction": split[GLOBAL_RECOVERS] / result.n_starts if judged else float("nan"),
            "global_unidentified_fraction": split[GLOBAL_OTHER] / result.n_starts if judged else float("nan"),
            "min_hessian_eig": float(min(minima)) if minima else float("nan")}
