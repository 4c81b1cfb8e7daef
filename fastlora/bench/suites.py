"""The cases of each kind of configuration (:mod:`fastlora.bench.configs`).

Every case calls the public API only (``fl.make_problem``, ``fl.retrain``, ``fl.evaluate``,
the sweep runner) and the baselines of ``fastlora.baselines``; each is scored against a
reference case of the same config, measured in the same run: one GEMM of the solvers' shape,
or drawing the point's raw data.

Flop model (useful work of one population ALS iteration): 2·d²·T·k — the product of the
shared d×d residual with all T adapters of rank k.  The A step, orthonormalisation and
Rayleigh–Ritz are not counted, so "useful GFLOP/s" is a lower bound on the work rate.
"""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from ..backends import get_backend
from .case import Case, case_name, draw_case, gemm_case, keyed_draw_case, lazy
from .configs import Config

# the paper point's solves take milliseconds, and a shared machine's hiccups hit a few of them:
# the median of many is the typical time, the median of 5 is not
PAPER_ROUNDS = 25
REACHED_RTOL = 1e-9  # "reached the baseline's objective": within this relative tolerance of it
TARGET_REL_ERR = 1e-8


@dataclass(frozen=True)
class Options:
    repeat: int = 3
    baselines: bool = True
    full_baselines: bool = False
    peft: str | None = None    # --peft: the parameterization of every solve that takes one
    quick: bool = False


def build_cases(cfg: Config, backends: list[str], opt: Options) -> list[Case]:
    """The cases of ``cfg`` on ``backends`` (references first: the others are scored against them),
    each with the config's sizes among its params (results compare only at equal sizes)."""
    cases = {"paper": _paper, "population": _population, "memory": _memory, "reduced": _reduced,
             "implicit": _implicit, "points": _points, "shallow": _shallow}[cfg.kind](cfg, backends, opt)
    for case in cases:
        case.params = {**cfg.sizes(), **case.params}
    return cases


def _gemm_references(cfg: Config, backends: list[str], rounds: int) -> tuple[list[Case], dict]:
    """One GEMM reference per array module (numba runs numpy's BLAS); {backend: reference name}."""
    cases, names = [], {}
    for b in backends:
        module = "cupy" if b == "cupy" else "numpy"
        if module not in {c.backend for c in cases}:
            cases.append(gemm_case(cfg.name, get_backend(module), cfg.d, cfg.T * cfg.k, cfg.dtype, rounds))
        names[b] = case_name(cfg.name, module, "gemm")
    return cases, names


def _per_iteration(stamps: list[float], res, wall: float) -> float:
    if len(stamps) >= 2:
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return wall / max(res.n_iter, 1)


# -- population: full-space iterations ----------------------------------------------------------

def _population(cfg: Config, backends: list[str], opt: Options) -> list[Case]:
    import fastlora as fl
    prob = lazy(lambda: fl.make_problem(d=cfg.d, k=cfg.k, T=cfg.T, seed=0, n_test_tasks=0))
    peft = opt.peft or "lora_sym"
    useful = 2.0 * cfg.d ** 2 * cfg.T * cfg.k
    cases, refs = _gemm_references(cfg, backends, opt.repeat)
    for b in backends:
        def run(b=b):
            stamps = []
            res = fl.retrain(prob(), peft=peft, backend=b, dtype=cfg.dtype, max_iter=cfg.iters, tol=0.0,
                             reduction="none", callback=lambda i, elapsed, obj: stamps.append(elapsed))
            return stamps, res

        def figures(median, out, lookup):
            return {"solver": out[1].info.get("solver"), "useful_gflops": useful / median / 1e9}
        cases.append(Case(cfg.name, b, "default", run, opt.repeat, params={"peft": peft}, reference=refs[b],
                          seconds_of=lambda out, wall: _per_iteration(out[0], out[1], wall), figures=figures,
                          per="iteration"))
    if cfg.name == "pop-384" and peft == "lora_sym":
        cases += _to_tolerance(cfg, prob, backends, refs, opt)
    return cases


def _tolerance_for(prob, backend: str, dtype: str, **options) -> tuple[float, int, float]:
    """(tol, iterations, rel. error): the loosest solver tolerance whose result has
    ‖A − A*‖/‖A*‖ ≤ TARGET_REL_ERR (the last tried where none has)."""
    import fastlora as fl
    tol = 1e-9
    for _ in range(6):
        res = fl.retrain(prob, backend=backend, dtype=dtype, tol=tol, max_iter=20000, **options)
        err = float(np.linalg.norm(res.A - prob.A_star) / np.linalg.norm(prob.A_star))
        if err <= TARGET_REL_ERR:
            break
        tol /= 10
    return tol, res.n_iter, err


def _to_tolerance(cfg, prob, backends, refs, opt) -> list[Case]:
    """Whole retrains to rel. error 1e-8 in A, and textbook dense ALS (bench/baselines) to the same."""
    import fastlora as fl

    from ..baselines import dense_als
    options = {"solver": "als", "reduction": "none"}
    cases = []
    dense = case_name(cfg.name, "numpy", "dense_als")
    if opt.baselines:
        # the baseline's iterates are those of adapter_step="exact" (the same algorithm): its
        # iteration count to the target is read from that run, unless --full-baselines runs it there
        exact = lazy(lambda: _tolerance_for(prob(), "numpy", "float64", adapter_step="exact", **options))

        def run_dense():
            W = np.stack([t.W_star for t in prob().tasks])
            if opt.full_baselines:
                return dense_als(W, cfg.k, A_star=prob().A_star, tol_rel_A=TARGET_REL_ERR)
            return dense_als(W, cfg.k, A_star=prob().A_star, max_iter=3)

        def dense_seconds(out, wall):
            return out["seconds"] if opt.full_baselines else out["seconds_per_iteration"] * exact()[1]

        def dense_figures(median, out, lookup):
            if opt.full_baselines:
                return {"iterations": out["iterations"], "how": "measured to tolerance"}
            return {"iterations": exact()[1], "how": f"{out['seconds_per_iteration']:.3g} s/iteration measured over "
                                                     f"3 iterations x {exact()[1]} iterations to 1e-8"}
        cases.append(Case(cfg.name, "numpy", "dense_als", run_dense, 1 if opt.full_baselines else opt.repeat,
                          warmup=0, reference=refs["numpy"],
                          seconds_of=dense_seconds, figures=dense_figures))
    for b in backends:
        tolerance = lazy(lambda b=b: _tolerance_for(prob(), b, cfg.dtype, **options))

        def run(b=b, tolerance=tolerance):
            return fl.retrain(prob(), backend=b, dtype=cfg.dtype, tol=tolerance()[0], max_iter=20000, **options)

        def figures(median, res, lookup, tolerance=tolerance):
            baseline = lookup(dense)
            return {"iterations_to_1e8": res.n_iter, "rel_err_A": tolerance()[2],
                    "reached": tolerance()[2] <= TARGET_REL_ERR,
                    **({"speedup_vs_dense_als": baseline.median / median} if baseline else {})}
        cases.append(Case(cfg.name, b, "to-1e-8", run, opt.repeat, reference=refs[b], figures=figures))
    return cases


# -- the paper's point ----------------------------------------------------------------------------

def _paper(cfg: Config, backends: list[str], opt: Options) -> list[Case]:
    """The paper's point on raw data (the reduction to statistics is timed too).

    ``default``: ``fl.retrain(tasks, rank=k)`` exactly as a user writes it on tasks built once, run to
    its own convergence, the median of ≥ 25 runs; ``default-with-tasks``: the same with the tasks built
    from the raw data (their reduction to statistics) inside every timed call.  Without ``--peft``, the
    solvers are also timed to the first iteration whose objective is within ``REACHED_RTOL`` of the paper
    procedure's final one
    (``baselines.paper_gd``, the authors' batched layout, seeded).
    """
    import fastlora as fl

    from ..baselines import meta_objective, paper_gd
    peft = opt.peft or "lora_sym"

    @lazy
    def data():
        prob = fl.make_problem(d=cfg.d, k=cfg.k, T=cfg.T, seed=0, n_test_tasks=0)
        rng = np.random.default_rng(0)
        W = np.stack([t.W_star for t in prob.tasks])
        X = rng.standard_normal((cfg.T, cfg.d, cfg.n))          # (T, d, N): one column per sample
        return X, W @ X + cfg.noise * rng.standard_normal(X.shape)

    def fresh_tasks():
        X, Y = data()
        return [fl.Task(X[t].T, Y[t].T) for t in range(cfg.T)]

    built_once = lazy(fresh_tasks)  # "tasks built once": a user retraining the tasks they hold

    draw = draw_case(cfg.name, (cfg.T, cfg.d, cfg.n), opt.repeat, "the point's raw data")
    cases = [draw]
    baseline_name = case_name(cfg.name, "numpy", "paper_gd")
    baseline = {}

    if opt.baselines:
        def run_baseline():
            baseline.update(paper_gd(*data(), cfg.k, outer_steps=cfg.baseline_steps, seed=0))
            return baseline

        def baseline_figures(median, out, lookup):
            return {"objective": out["objective"], "outer_steps": cfg.baseline_steps, "inner_steps": 10}
        cases.append(Case(cfg.name, "numpy", "paper_gd", run_baseline, 1, warmup=0, reference=draw.name,
                          params={"outer_steps": cfg.baseline_steps}, seconds_of=lambda out, wall: out["seconds"],
                          figures=baseline_figures))

    def threshold():
        return baseline["objective"] * (1 + REACHED_RTOL) if "objective" in baseline else None

    # default: the call on tasks built once; default-with-tasks: building the tasks from the raw data
    # (the reduction to statistics) in every timed call too
    variants = [("default", {}), ("default-with-tasks", {})]
    if opt.peft is None and opt.baselines:
        variants += [("als", {"solver": "als"}), ("gd", {"solver": "gd"}),
                     ("lbfgs", {"solver": "gd", "optimizer": "lbfgs"})]
    for b in backends:
        for variant, options in variants:
            def solve(b=b, options=options, variant=variant, **limits):
                tasks = fresh_tasks() if variant == "default-with-tasks" else built_once()
                return fl.retrain(tasks, peft=peft, rank=cfg.k, backend=b, **options, **limits)

            @lazy
            def iterations_to_target(solve=solve):
                first = solve(max_iter=20000, tol=1e-14)  # to its own convergence
                hits = np.nonzero(first.history <= threshold())[0] if threshold() is not None else []
                return int(hits[0]) + 1 if len(hits) else first.n_iter

            def run(variant=variant, solve=solve, iterations_to_target=iterations_to_target):
                if variant.startswith("default"):
                    return solve()
                return solve(max_iter=iterations_to_target(), tol=0.0)

            def figures(median, res, lookup):
                X, Y = data()
                row = {"solver": res.info.get("solver"), "iterations": res.n_iter, "converged": res.converged,
                       "objective": float(res.objective)}
                if res.info.get("optimizer"):  # solver=gd runs L-BFGS by default: say which
                    row["optimizer"] = res.info["optimizer"]
                if "U" in res.params:
                    row["objective_raw_data"] = meta_objective(X, Y, res.A, res.params["U"])
                paper = lookup(baseline_name)
                if paper is not None:
                    row.update(baseline_objective=baseline["objective"],
                               reached=bool(res.objective <= threshold()),
                               speedup_vs_paper_gd=paper.median / median)
                return row
            cases.append(Case(cfg.name, b, variant, run, max(opt.repeat, PAPER_ROUNDS), params={"peft": peft},
                              reference=draw.name, figures=figures))
        cases.append(_many(cfg, b, peft, draw.name, opt))
    return cases


MANY_PROBLEMS = 1000


def _many(cfg: Config, backend: str, peft: str, reference: str, opt: Options) -> Case:
    """``fl.retrain_many`` of ``MANY_PROBLEMS`` fresh paper-size finite-sample problems
    (``sampler="stats"``; --quick: a fifth) on one core (Numba and BLAS one thread each): seconds per
    problem.  The problems are drawn outside the timed call and garbage left by earlier work is
    collected before it, so that a full collection of the drawing's objects does not land inside
    (collections of the call's own garbage do).  "At its optimum": the objective is within
    ``REACHED_RTOL`` of the same problem solved to tol=1e-14 (which converged)."""
    import gc

    from threadpoolctl import threadpool_limits

    import fastlora as fl
    count = MANY_PROBLEMS // 5 if opt.quick else MANY_PROBLEMS
    rounds = itertools.count(1)  # each round's problems are new ones (their fits are part of the call)

    def problems():
        first = next(rounds) * count
        return [fl.make_problem(d=cfg.d, k=cfg.k, T=cfg.T, n=cfg.n, noise=cfg.noise, seed=first + i,
                                n_test_tasks=0, sampler="stats") for i in range(count)]

    def call():
        batch = problems()
        gc.collect()
        with threadpool_limits(1):
            started = time.perf_counter()
            results = fl.retrain_many(batch, peft=peft, rank=cfg.k, backend=backend, threads=1)
            seconds = time.perf_counter() - started
        return {"seconds": seconds, "problems": batch, "results": results}

    def figures(median, out, lookup):
        with threadpool_limits(1):
            tight = fl.retrain_many(out["problems"], peft=peft, rank=cfg.k, backend=backend, threads=1, tol=1e-14,
                                    max_iter=20000)
        gaps = [abs(r.objective - t.objective) / abs(t.objective) for r, t in zip(out["results"], tight)]
        return {"problems": count, "problems_per_second": 1 / median,
                "converged": sum(bool(r.converged) for r in out["results"]),
                "at_optimum": sum(bool(t.converged) and g <= REACHED_RTOL for g, t in zip(gaps, tight)),
                "largest_objective_gap": max(gaps)}
    return Case(cfg.name, backend, f"retrain_many-{count}", call, opt.repeat, params={"peft": peft, "threads": 1},
                reference=reference, seconds_of=lambda out, wall: out["seconds"] / count,
                figures=figures, per="problem")


# -- the reduced default and the implicit problem ------------------------------------------------

def _reduced(cfg: Config, backends: list[str], opt: Options) -> list[Case]:
    """The default ``fl.retrain(prob, rank=k)`` on a population problem with T·k ≪ d, solved in the
    span of the task factors, in units of one d×d×(T·k) GEMM; ``--full-baselines`` also times the
    full-space solve."""
    import fastlora as fl
    prob = lazy(lambda: fl.make_problem(d=cfg.d, k=cfg.k, T=cfg.T, seed=0, n_test_tasks=0))
    cases, refs = _gemm_references(cfg, backends, opt.repeat)
    variants = [("default", {})] + ([("full-space", {"reduction": "none"})] if opt.full_baselines else [])
    for b in backends:
        for variant, options in variants:
            def run(b=b, options=options):
                return fl.retrain(prob(), method="lora-ml", peft="lora_sym", rank=cfg.k, backend=b, dtype=cfg.dtype,
                                  **options)

            def figures(median, res, lookup):
                err = float(np.linalg.norm(res.A - prob().A_star) / np.linalg.norm(prob().A_star))
                return {"rel_err_A": err, "iterations": res.n_iter, "converged": res.converged,
                        "reduced_to": (res.info.get("reduction") or {}).get("m_out")}
            cases.append(Case(cfg.name, b, variant, run, opt.repeat if variant == "default" else 1,
                              reference=refs[b], figures=figures))
    return cases


def _fresh_process(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (so its peak memory is its own); the JSON object its
    last output line prints."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"the fresh process failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _peak_rss(data: dict) -> dict:
    return {"peak_rss_gib": data["maxrss_kib"] / 2 ** 20, "peak_rss_gb": data["maxrss_kib"] * 1024 / 1e9}


def _implicit(cfg: Config, backends: list[str], opt: Options) -> list[Case]:
    """``make_problem(..., implicit=True)`` at a size whose A* (8·d² bytes) is never stored: retrain
    (in the span of the task factors) and evaluate in a fresh process, with its peak memory."""
    backend = backends[0]
    draw = draw_case(cfg.name, (cfg.T, cfg.d, cfg.k), opt.repeat, "the task factors")
    code = ("import json, resource, time, fastlora as fl\n"
            "t0 = time.perf_counter()\n"
            f"p = fl.make_problem(d={cfg.d}, k={cfg.k}, T={cfg.T}, seed=0, implicit=True)\n"
            "t1 = time.perf_counter()\n"
            f"r = fl.retrain(p, rank={cfg.k}, backend={backend!r}, dense_A=False)\n"
            "t2 = time.perf_counter()\n"
            "m = fl.evaluate(r, p)\n"
            "t3 = time.perf_counter()\n"
            "print(json.dumps({'make_problem': t1 - t0, 'retrain': t2 - t1, 'evaluate': t3 - t2, 'n_iter': r.n_iter,"
            " 'converged': r.converged, 'reduced_to': r.info['reduction']['m_out'], 'rel_err_A': m['rel_err_A'],"
            " 'excess_risk': m['excess_risk'], 'adapt_rank': m['adapt_rank'],"
            " 'maxrss_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n")

    def figures(median, data, lookup):
        return {**{k: v for k, v in data.items() if k != "maxrss_kib"}, **_peak_rss(data),
                "dense_A_star_gb": 8 * cfg.d ** 2 / 1e9}
    return [draw, Case(cfg.name, backend, "default", lambda: _fresh_process(code), 1, warmup=0, reference=draw.name,
                       seconds_of=lambda data, wall: data["make_problem"] + data["retrain"] + data["evaluate"],
                       figures=figures)]


def _memory(cfg: Config, backends: list[str], opt: Options) -> list[Case]:
    """Peak memory (and time) of ``iters`` full-space ALS iterations, each in a fresh process."""
    cases, refs = _gemm_references(cfg, backends, opt.repeat)
    for b in backends:
        code = ("import json, resource, time, fastlora as fl\n"
                f"p = fl.make_problem(d={cfg.d}, k={cfg.k}, T={cfg.T}, seed=0, n_test_tasks=0)\n"
                "t = time.perf_counter()\n"
                f"r = fl.retrain(p, backend={b!r}, max_iter={cfg.iters}, tol=0.0, power_iter_init=1)\n"
                "s = time.perf_counter() - t\n"
                "extra = {}\n"
                f"if {b!r} == 'cupy':\n"
                "    import cupy; extra['gpu_peak_bytes'] = cupy.get_default_memory_pool().total_bytes()\n"
                "print(json.dumps({'seconds': s, 'n_iter': r.n_iter, 'maxrss_kib': "
                "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, **extra}))\n")

        def figures(median, data, lookup):
            return {"iterations": data["n_iter"], **_peak_rss(data),
                    **{k: v for k, v in data.items() if k == "gpu_peak_bytes"}}
        cases.append(Case(cfg.name, b, "default", lambda code=code: _fresh_process(code), 1, warmup=0,
                          reference=refs[b], seconds_of=lambda data, wall: data["seconds"], figures=figures))
    return cases


# -- sweep rows -----------------------------------------------------------------------------------

def _points(cfg: Config, backends: list[str], opt: Options) -> list[Case]:
    """Sweep rows at the paper's point as ``fastlora sweep`` runs them (make_problem + retrain +
    evaluate): the marginal cost of a row is the difference of a sweep of 3N rows and one of N
    rows over 2N (start-up cancels), in units of drawing the row's raw data; the start-up is timed
    on its own, as the wall time of a sweep of one row per worker."""
    draw = draw_case(cfg.name, (cfg.T, cfg.n, cfg.d), opt.repeat, "a row's raw data")
    own_draw = keyed_draw_case(cfg.name, (cfg.T, cfg.n, cfg.d), opt.repeat, draw.name) if "numba" in backends else None
    cases = [draw] if own_draw is None else [draw, own_draw]
    modes = [("finite", "raw"), ("finite", "stats"), ("population", "raw")]
    # --quick: one backend (the compiled one where there is one)
    for b in ([b for b in backends if b != "numpy"] or backends)[:1] if opt.quick else backends:
        for workers in (1, 2):
            for mode, sampler in modes[:1] if (opt.quick and workers > 1) else modes:
                spec = _points_spec(cfg, b, mode, sampler, opt.peft)
                variant = f"{mode}-{sampler}-{workers}w"
                # spawned workers' start-up varies by seconds: two workers get at least three rounds
                # (--quick: one, and no per-row figure, which that noise would swamp at its sizes)
                rounds = opt.repeat if workers == 1 else (1 if opt.quick else max(opt.repeat, 3))
                startup = Case(cfg.name, b, f"{variant}-startup",
                               lambda spec=spec, w=workers: _sweep_seconds(spec, w, w), rounds,
                               params={"workers": workers, "peft": opt.peft or "lora_sym"}, warmup=0,
                               reference=draw.name, per="sweep of one row per worker")

                rows = cfg.rows * (WORKER_ROWS_FACTOR if workers > 1 else 1)

                def pair(spec=spec, w=workers, rows=rows):
                    return _sweep_seconds(spec, rows, w), _sweep_seconds(spec, 3 * rows, w)

                def figures(median, out, lookup, startup=startup.name, workers=workers, rows=rows):
                    start = lookup(startup)
                    return {"workers": workers, "rows_per_second": 1 / median, "ms_per_row": 1e3 * median,
                            "startup_seconds": start.median if start else None, "sweep_rows": [rows, 3 * rows]}
                cases.append(startup)
                if workers == 1 or not opt.quick:
                    cases.append(Case(cfg.name, b, variant, pair, rounds, warmup=0, reference=draw.name,
                                      params={"workers": workers, "peft": opt.peft or "lora_sym"},
                                      seconds_of=lambda out, wall, rows=rows: (out[1] - out[0]) / (2 * rows),
                                      figures=figures, per="row"))
    return cases


# two workers run WORKER_ROWS_FACTOR times the rows: a worker starts in ~1 s, in which one row-fast worker
# can finish a whole small sweep alone, and the difference of the two sweeps no longer cancels start-up
WORKER_ROWS_FACTOR = 4


def _points_spec(cfg: Config, backend: str, mode: str, sampler: str, peft: str | None):
    n = cfg.n if mode == "finite" else '"population"'
    peft_line = f'peft = "{peft}"\n' if peft else ""

    def text(count: int) -> str:
        return (f'name = "points"\nrepeats = {count}\n[grid]\nmethod = ["lora-ml"]\n[fixed]\n'
                f'd = {cfg.d}\nk = {cfg.k}\nT = {cfg.T}\nn = {n}\nnoise = {cfg.noise}\nn_ft = 100\n'
                f'ft_rank = {cfg.k}\nsampler = "{sampler}"\nbackend = "{backend}"\n{peft_line}')
    return text


def _sweep_seconds(spec_text, rows: int, workers: int) -> float:
    """Wall seconds of ``fastlora sweep`` running ``rows`` rows into a fresh store; a failed row raises."""
    from ..sweep import parse_spec, run_sweep
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        summary = run_sweep(parse_spec(spec_text(rows), origin="points"), f"{folder}/points.sqlite",
                            workers=workers, progress=False)
        seconds = time.perf_counter() - started
    if summary.failed:
        raise RuntimeError(f"{summary.failed} sweep row(s) failed: {'; '.join(summary.error_messages)}")
    return seconds


# -- the shallow network --------------------------------------------------------------------------

def _shallow(cfg: Config, backends: list[str], opt: Options) -> list[Case]:
    """The paper's shallow-network point: fastlora's default LoRA-ML retraining against the paper's
    procedure (``baselines.paper_shallow``: full-batch AdamW) on the same data, both evaluating the
    loss with the fastest available fused kernel, so the ratio measures the procedure.  fastlora is
    run to its own convergence and timed to the first iteration at or below the baseline's final
    objective (Σ_t (1/2n) Σ_i (ŷ − y)²)."""
    from ..baselines import paper_shallow
    from ..shallow import make_shallow_problem, retrain_shallow
    from ..shallow.model import kernel_for

    @lazy
    def data():
        prob = make_shallow_problem(d=cfg.d, k=cfg.k, T=cfg.T, n=cfg.n, noise=cfg.noise, seed=0, n_test_tasks=0)
        return prob, np.stack([task.X for task in prob.tasks]), np.stack([task.y for task in prob.tasks])

    def mse_loss_grad(X, y, W, c):  # the paper's MSE (1/n)Σ(ŷ − y)² = 2·L_t, and its gradients
        fused = kernel_for(get_backend("numba" if "numba" in backends else "numpy"))
        losses, G, gc = fused(X, y, np.full(cfg.T, cfg.n, dtype=np.int64), np.ascontiguousarray(W),
                              np.broadcast_to(c, (W.shape[0], c.shape[0])))
        return 2.0 * losses, 2.0 * G, 2.0 * gc

    draw = draw_case(cfg.name, (cfg.T, cfg.n, cfg.d), opt.repeat, "the point's raw data")
    cases = [draw]
    baseline, baseline_name = {}, case_name(cfg.name, "numpy", "paper_shallow")
    if opt.baselines:
        def run_baseline():
            _, X, y = data()
            baseline.update(paper_shallow(X, y, cfg.k, steps=cfg.baseline_steps, seed=0, loss_grad=mse_loss_grad))
            return baseline
        cases.append(Case(cfg.name, "numpy", "paper_shallow", run_baseline, 1, warmup=0, reference=draw.name,
                          params={"steps": cfg.baseline_steps}, seconds_of=lambda out, wall: out["seconds"],
                          figures=lambda median, out, lookup: {"objective": out["objective"],
                                                               "steps": cfg.baseline_steps}))
    for b in backends:
        def solve(b=b, **limits):
            # one start, as the paper's procedure (LoRA-ML's default keeps the best of several)
            return retrain_shallow(data()[0], backend=b, seed=0, restarts=1, **limits)

        def figures(median, res, lookup):
            row = {"solver": res.info.get("optimizer"), "iterations": res.n_iter, "converged": res.converged,
                   "objective": res.objective}
            paper = lookup(baseline_name)
            if paper is not None:
                hits = np.nonzero(res.history <= baseline["objective"])[0]
                row.update(baseline_objective=baseline["objective"], reached=bool(len(hits)),
                           speedup_vs_paper_full_run=paper.median / median,
                           iterations_to_baseline=int(hits[0]) + 1 if len(hits) else None)
            return row
        cases.append(Case(cfg.name, b, "default", solve, opt.repeat, reference=draw.name, figures=figures,
                          warmup_call=lambda solve=solve: solve(max_iter=5)))
        if opt.baselines:
            cases.append(_shallow_to_baseline(cfg, b, solve, baseline, baseline_name, draw.name, opt))
    return cases


def _shallow_to_baseline(cfg, backend, solve, baseline, baseline_name, reference, opt) -> Case:
    """fastlora timed to the first iteration at or below the baseline's final objective."""
    @lazy
    def iterations():
        hits = np.nonzero(solve().history <= baseline["objective"])[0]
        if not len(hits):
            raise RuntimeError("fastlora's default retraining did not reach the baseline's objective")
        return int(hits[0]) + 1

    def figures(median, res, lookup):
        paper = lookup(baseline_name)
        return {"iterations_to_baseline": iterations(), "objective": res.objective,
                **({"speedup_vs_paper_shallow": paper.median / median} if paper else {})}
    return Case(cfg.name, backend, "to-baseline", lambda: solve(max_iter=iterations(), tol=0.0, ftol=0.0),
                opt.repeat, reference=reference, figures=figures)
