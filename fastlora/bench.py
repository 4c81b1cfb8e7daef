"""The benchmark harness behind ``fastlora bench``.

Every number is measured in the same run as the references it is compared with: the numpy
reference backend, the machine's GEMM rate, and the baselines in ``fastlora.baselines``
(``bench/baselines``).  Timings are medians over ``repeat`` runs; GPU work is synchronised.

Flop model (useful work of one population ALS iteration): 2·d²·T·k — the product of the
shared d×d residual with all T adapters of rank k.  The A step (a symmetric rank-T·k update,
d²·T·k more flops), orthonormalisation and Rayleigh–Ritz (O(T·d·k²)) are not counted, so
"useful GFLOP/s" is a lower bound on the machine's work rate.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .backends import backend_status, blas_threads, cupy_status, get_backend, numba_status
from .config import usable_cores
from .errors import FastLoRAError


@dataclass
class Config:
    name: str
    kind: str           # "paper" | "population" | "memory" | "points"
    d: int
    T: int
    k: int
    n: int | None = None
    noise: float = 0.0
    dtype: str = "float64"
    iters: int = 20
    note: str = ""
    backends: tuple = ("numpy", "numba", "cupy")


CONFIGS = {c.name: c for c in (
    Config("paper", "paper", d=10, T=3, k=1, n=5000, noise=0.01,
           note="the paper's point on raw data: time to the paper procedure's final objective, vs that procedure"),
    Config("pop-384", "population", d=384, T=48, k=4,
           note="full-space ALS: time to rel. error 1e-8 in A, vs textbook dense ALS"),
    Config("pop-512", "population", d=512, T=64, k=4, note="full-space ALS iteration: numba vs numpy"),
    Config("pop-1024", "population", d=1024, T=128, k=8, iters=20,
           note="full-space ALS iteration (T·k = d: no reduction) as a fraction of the DGEMM rate (2·d²·T·k flops)"),
    Config("pop-4096", "memory", d=4096, T=1024, k=8, iters=10, backends=("numba", "cupy"),
           note="peak memory of 10 full-space ALS iterations"),
    Config("reduced-8192", "reduced", d=8192, T=32, k=4,
           note="the default retrain to rel. error 1e-8 in A, in GEMM-equivalents (one d×d×T·k GEMM, same run)"),
    Config("implicit-100k", "implicit", d=100_000, T=64, k=4, backends=("numba", "numpy"),
           note="the paper's law at d=100,000 with A* never stored: retrain + evaluate, peak memory, exact metrics"),
    Config("gpu-8192", "population", d=8192, T=2048, k=8, dtype="float32", iters=10, backends=("cupy",),
           note="GPU full-space ALS iteration vs the SGEMM rate, and vs numba"),
    Config("points", "points", d=10, T=3, k=1, n=5000, noise=0.01,
           note="sweep rows per second at the paper's size (make_problem + retrain + evaluate), vs drawing the data"),
    Config("smoke", "population", d=64, T=8, k=2, iters=10, note="a quick check of the harness"),
    Config("shallow-paper", "shallow", d=10, T=3, k=1, n=1000, noise=0.1, backends=("numba", "numpy"),
           note="shallow network, LoRA-ML: time to the paper procedure's final loss (AdamW, 40,000 steps), "
                "same data and kernel"),
)}

REACHED_RTOL = 1e-9  # "reached the baseline's objective": within this relative tolerance of it


def machine_info() -> dict:
    import numpy
    import scipy
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": _cpu_model(),
            "cores": os.cpu_count(), "usable_cores": usable_cores(), "blas_threads": blas_threads(),
            "numpy": numpy.__version__, "scipy": scipy.__version__}
    try:
        from importlib.metadata import version
        info["fastlora"] = version("fastlora")
    except Exception:  # noqa: BLE001
        info["fastlora"] = "source"
    if numba_status()[0]:
        import numba
        info["numba"] = numba.__version__
        info["numba_threads"] = numba.config.NUMBA_NUM_THREADS
    ok, why = cupy_status()
    info["gpu"] = get_backend("cupy").describe() if ok else f"none ({why})"
    return info


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# the paper point's solves take milliseconds, and a shared machine's hiccups (another tenant, a page
# fault burst) hit a few of them: the median of many is the typical time, the median of 5 is not
PAPER_REPEATS = 25


def _median_time(fn, repeat: int, sync=lambda: None) -> float:
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_rate(backend, d: int, width: int, dtype: str, repeat: int = 5) -> float:
    """FLOP/s of a (width × d) @ (d × d) GEMM in ``dtype`` on ``backend`` (the solvers' shape)."""
    xp = backend.xp
    rng = np.random.default_rng(0)
    X = backend.asarray(rng.standard_normal((width, d)), dtype)
    D = backend.asarray(rng.standard_normal((d, d)), dtype)
    X @ D
    seconds = _median_time(lambda: X @ D, repeat, backend.synchronize)
    if xp is not np:
        xp.get_default_memory_pool().free_all_blocks()
    return 2.0 * d * d * width / seconds


def per_iteration(prob, backend: str, dtype: str, iters: int, repeat: int, threads=None) -> float:
    """Median seconds per ALS iteration, from iteration timestamps (setup and warm-up excluded)."""
    import fastlora as fl

    def run():
        stamps = []
        fl.retrain(prob, backend=backend, dtype=dtype, max_iter=iters, tol=0.0, threads=threads, solver="als",
                   reduction="none", callback=lambda i, elapsed, obj: stamps.append(elapsed))
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    run()  # compile / warm caches
    return statistics.median(run() for _ in range(repeat))


def time_to_rel_error(prob, backend: str, dtype: str, target: float = 1e-8, repeat: int = 3, **options):
    """(median seconds of a whole retrain that ends with ‖A − A*‖/‖A*‖ ≤ target, iterations, error)."""
    import fastlora as fl
    tol = 1e-9
    options = {"solver": "als", "reduction": "none", **options}
    for _ in range(6):
        res = fl.retrain(prob, backend=backend, dtype=dtype, tol=tol, max_iter=20000, **options)
        err = float(np.linalg.norm(res.A - prob.A_star) / np.linalg.norm(prob.A_star))
        if err <= target:
            break
        tol /= 10
    else:
        return float("nan"), res.n_iter, err
    seconds = statistics.median(fl.retrain(prob, backend=backend, dtype=dtype, tol=tol, max_iter=20000,
                                           **options).seconds for _ in range(repeat))
    return seconds, res.n_iter, err


@dataclass
class Report:
    machine: dict
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def add(self, **row):
        self.rows.append(row)

    def to_json(self) -> str:
        return json.dumps({"machine": self.machine, "rows": self.rows, "notes": self.notes}, indent=2, default=str)


def run_bench(names, backends, repeat: int = 3, baselines: bool = True, full_baselines: bool = False,
              echo=print) -> Report:
    report = Report(machine_info())
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise FastLoRAError(f"unknown bench config(s) {', '.join(unknown)}; available: {', '.join(CONFIGS)}")
    for name in names:
        cfg = CONFIGS[name]
        usable = [b for b in backends if b in cfg.backends and _available(b, report)]
        echo(f"== {cfg.name}: d={cfg.d} T={cfg.T} k={cfg.k}" + (f" n={cfg.n}" if cfg.n else "") + f" — {cfg.note}")
        if not usable:
            report.notes.append(f"{cfg.name}: no requested backend can run it here ({', '.join(backends)})")
            continue
        {"paper": _bench_paper, "population": _bench_population, "memory": _bench_memory, "reduced": _bench_reduced,
         "implicit": _bench_implicit, "points": _bench_points,
         "shallow": _bench_shallow}[cfg.kind](cfg, usable, repeat, baselines, full_baselines, report, echo)
    return report


def _available(backend: str, report: Report) -> bool:
    ok, why = backend_status(backend)
    if not ok and not any(why in n for n in report.notes):
        report.notes.append(f"backend {backend} skipped: {why}")
    return ok


def _bench_population(cfg, backends, repeat, baselines, full_baselines, report, echo):
    import fastlora as fl
    prob = fl.make_problem(d=cfg.d, k=cfg.k, T=cfg.T, seed=0, n_test_tasks=0)
    useful = 2.0 * cfg.d ** 2 * cfg.T * cfg.k
    reference = None
    measure_numpy = "numpy" in cfg.backends and cfg.d <= 2048
    compare = (["numpy"] if measure_numpy else []) + [b for b in backends if b != "numpy" or not measure_numpy]
    for backend in compare:
        be = get_backend(backend)
        rate = gemm_rate(be, cfg.d, cfg.T * cfg.k, cfg.dtype)
        sec = per_iteration(prob, backend, cfg.dtype, cfg.iters, repeat)
        reference = sec if backend == "numpy" else reference
        row = {"config": cfg.name, "backend": backend, "device": be.describe(), "dtype": cfg.dtype,
               "sec_per_iter": sec, "useful_gflops": useful / sec / 1e9, "gemm_gflops": rate / 1e9,
               "fraction_of_gemm": (useful / sec) / rate,
               "speedup_vs_numpy": (reference / sec) if reference else None}
        if cfg.name == "pop-384":
            seconds, n_iter, err = time_to_rel_error(prob, backend, cfg.dtype, repeat=repeat)
            row.update(time_to_1e8=seconds, iterations_to_1e8=n_iter, rel_err_A=err)
        report.add(**row)
        echo(_line(row))
    if cfg.name == "pop-384" and baselines:
        _dense_baseline(cfg, prob, report, echo, full_baselines)


def _dense_baseline(cfg, prob, report, echo, full):
    from .baselines import dense_als
    W = np.stack([t.W_star for t in prob.tasks])
    # the baseline's iterates are those of fastlora's adapter_step="exact" (same algorithm):
    # its iteration count to the target is read from that run
    exact = time_to_rel_error(prob, "numpy", "float64", repeat=1, adapter_step="exact")
    if full:
        out = dense_als(W, cfg.k, A_star=prob.A_star, tol_rel_A=1e-8)
        seconds, how = out["seconds"], f"measured to tolerance ({out['iterations']} iterations)"
    else:
        out = dense_als(W, cfg.k, A_star=prob.A_star, max_iter=3)
        seconds = out["seconds_per_iteration"] * exact[1] + 0.0
        how = f"{out['seconds_per_iteration']:.3g} s/iter measured over 3 iterations x {exact[1]} iterations to 1e-8"
    row = {"config": cfg.name, "backend": "baseline:dense_als", "time_to_1e8": seconds, "how": how}
    report.add(**row)
    echo(_line(row))
    for r in report.rows:
        if r.get("config") == cfg.name and r.get("time_to_1e8") and not r["backend"].startswith("baseline"):
            r["speedup_vs_dense_als"] = seconds / r["time_to_1e8"]
            echo(f"   {r['backend']}: {r['speedup_vs_dense_als']:.0f}x faster to 1e-8 than dense ALS")


def _bench_paper(cfg, backends, repeat, baselines, full_baselines, report, echo):
    """The paper's point on raw data (the reduction to statistics is timed too).

    ``default``: ``fl.retrain(tasks, rank=k)`` exactly as a user writes it, run to its own
    convergence; the other variants are timed to the first iteration whose objective is
    within ``REACHED_RTOL`` of the baseline's final one (both end at the optimum to rounding,
    so an exact ``<=`` would be a coin flip).  The baseline (paper_gd) is seeded.
    """
    import fastlora as fl

    from .baselines import meta_objective, paper_gd
    rng = np.random.default_rng(0)
    prob = fl.make_problem(d=cfg.d, k=cfg.k, T=cfg.T, seed=0, n_test_tasks=0)
    X = rng.standard_normal((cfg.T, cfg.n, cfg.d))
    Y = np.stack([X[t] @ prob.tasks[t].W_star.T for t in range(cfg.T)]) + cfg.noise * rng.standard_normal(X.shape)
    steps = 3000 if baselines else 0
    target = None
    if steps:
        base = paper_gd(X, Y, cfg.k, outer_steps=steps, seed=0)
        # the target is evaluated by the same code as fastlora's own objective history
        from .taskbatch import Adapters, make_batch
        batch = make_batch([fl.Task(X[t], Y[t]) for t in range(cfg.T)], get_backend("numpy"), np.float64)
        target = float(batch.objective(base["A"][None], Adapters(dense=base["U"] @ base["U"].transpose(0, 2, 1)))[0])
        report.add(config=cfg.name, backend="baseline:paper_gd", seconds=base["seconds"], objective=target,
                   objective_raw=base["objective"])
        echo(f"  baseline paper_gd: 3000 outer steps in {base['seconds']:.2f} s, final objective {target:.15g}")
    threshold = None if target is None else target * (1 + REACHED_RTOL)
    variants = [("default", {}), ("als", {"solver": "als"}), ("gd", {"solver": "gd"}),
                ("gd/lbfgs", {"solver": "gd", "optimizer": "lbfgs"})]
    for backend in backends:
        for name, options in variants:
            def solve(backend=backend, options=options, **limits):
                tasks = [fl.Task(X[t], Y[t]) for t in range(cfg.T)]  # the reduction to statistics is timed too
                return fl.retrain(tasks, rank=cfg.k, backend=backend, **options, **limits)
            if name == "default":
                solve()
                seconds = _median_time(solve, max(repeat, PAPER_REPEATS))
                res = solve()
                n_iter = res.n_iter
            else:
                first = solve(max_iter=20000, tol=1e-14)  # to its own convergence
                hits = np.nonzero(first.history <= threshold)[0] if threshold is not None else []
                n_iter = int(hits[0]) + 1 if len(hits) else first.n_iter
                seconds = _median_time(lambda n_iter=n_iter: solve(max_iter=n_iter, tol=0.0),
                                       max(repeat, PAPER_REPEATS))
                res = solve(max_iter=n_iter, tol=0.0)
            check = float(res.objective)
            row = {"config": cfg.name, "backend": backend, "solver": name, "ran": res.info.get("solver"),
                   "seconds": seconds, "iterations": n_iter, "converged": res.converged, "objective": check,
                   "baseline_objective": target, "objective_raw_data": meta_objective(X, Y, res.A, res.params["U"]),
                   "speedup_vs_paper_gd": (base["seconds"] / seconds) if target is not None else None,
                   "reached": bool(threshold is not None and check <= threshold)}
            report.add(**row)
            echo(_line(row))


def _bench_reduced(cfg, backends, repeat, baselines, full_baselines, report, echo):
    """The default ``fl.retrain(prob, rank=k)`` on a population problem with T·k ≪ d, solved in the
    span of the task factors (fastlora.reduction), in units of one d×d×(T·k) GEMM measured in the
    same run; ``--full-baselines`` also times the full-space solve."""
    import fastlora as fl
    prob = fl.make_problem(d=cfg.d, k=cfg.k, T=cfg.T, seed=0, n_test_tasks=0)
    norm_star = float(np.linalg.norm(prob.A_star))
    for backend in backends:
        be = get_backend(backend)
        gemm_seconds = 2.0 * cfg.d ** 2 * cfg.T * cfg.k / gemm_rate(be, cfg.d, cfg.T * cfg.k, cfg.dtype)
        variants = [("default", {})] + ([("full space", {"reduction": "none"})] if full_baselines else [])
        for name, options in variants:
            def solve(backend=backend, options=options):
                return fl.retrain(prob, method="lora-ml", peft="lora_sym", rank=cfg.k, backend=backend,
                                  dtype=cfg.dtype, **options)
            res = solve()
            seconds = _median_time(solve, repeat if name == "default" else 1)
            err = float(np.linalg.norm(res.A - prob.A_star)) / norm_star
            row = {"config": cfg.name, "backend": backend, "solver": name, "seconds": seconds,
                   "gemm_equivalents": seconds / gemm_seconds, "gemm_seconds": gemm_seconds, "rel_err_A": err,
                   "iterations": res.n_iter, "converged": res.converged,
                   "reduced_to": (res.info.get("reduction") or {}).get("m_out")}
            report.add(**row)
            echo(_line(row))


def _bench_implicit(cfg, backends, repeat, baselines, full_baselines, report, echo):
    """``make_problem(..., implicit=True)`` at a size whose A* (8·d² bytes) is never stored:
    retrain (in the span of the task factors) and evaluate (rel_err_A needs one exact pass over A*)
    in a fresh process, reporting its peak memory."""
    backend = backends[0]
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
    data = _measure_in_fresh_process(code, f"{cfg.name} on {backend}", report, echo)
    if data is None:
        return
    row = {"config": cfg.name, "backend": backend, **{k: v for k, v in data.items() if k != "maxrss_kib"},
           **_peak_rss(data), "dense_A_star_gb": 8 * cfg.d ** 2 / 1e9}
    report.add(**row)
    echo(_line(row))


def _measure_in_fresh_process(code: str, label: str, report, echo) -> dict | None:
    """Run ``code`` in a fresh interpreter (so its peak memory is its own) and return the JSON
    object its last output line prints; None, with a note, where it fails."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        why = out.stderr.strip().splitlines()[-1:]
        report.notes.append(f"{label} failed: {why}")
        echo(f"  {label}: FAILED {why}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def _peak_rss(data: dict) -> dict:
    return {"peak_rss_gib": data["maxrss_kib"] / 2 ** 20, "peak_rss_gb": data["maxrss_kib"] * 1024 / 1e9}


def _bench_memory(cfg, backends, repeat, baselines, full_baselines, report, echo):
    for backend in backends:
        code = ("import json, resource, time, fastlora as fl\n"
                f"p = fl.make_problem(d={cfg.d}, k={cfg.k}, T={cfg.T}, seed=0, n_test_tasks=0)\n"
                "t = time.perf_counter()\n"
                f"r = fl.retrain(p, backend={backend!r}, max_iter={cfg.iters}, tol=0.0, power_iter_init=1)\n"
                "s = time.perf_counter() - t\n"
                "extra = {}\n"
                f"if {backend!r} == 'cupy':\n"
                "    import cupy; extra['gpu_peak_bytes'] = cupy.get_default_memory_pool().total_bytes()\n"
                "print(json.dumps({'seconds': s, 'n_iter': r.n_iter, 'maxrss_kib': "
                "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, **extra}))\n")
        data = _measure_in_fresh_process(code, f"{cfg.name} on {backend}", report, echo)
        if data is None:
            continue
        row = {"config": cfg.name, "backend": backend, "seconds": data["seconds"], "iterations": data["n_iter"],
               **_peak_rss(data)}
        report.add(**row)
        echo(_line(row))


def _data_unit(cfg, repeat: int) -> float:
    """Seconds to draw one point's raw data: T·n·d inputs and T·n·d_out noise normals (the floor
    a sweep row is measured against)."""
    rng = np.random.default_rng(0)
    return _median_time(lambda: (rng.standard_normal((cfg.T, cfg.n, cfg.d)),
                                 rng.standard_normal((cfg.T, cfg.n, cfg.d))), max(repeat, 5))


def _bench_points(cfg, backends, repeat, baselines, full_baselines, report, echo):
    """Sweep rows per second at the paper's point, as ``fastlora sweep`` runs them (make_problem +
    retrain + evaluate, chunks of one point's rows solved together): finite and population rows,
    raw and exact-statistics samplers, 1 and 2 workers; the row cost in units of drawing the
    point's raw data, measured in the same run."""
    unit = _data_unit(cfg, repeat)
    report.add(config=cfg.name, backend="data", seconds=unit,
               note=f"drawing T·n·d + T·n·d normals (T={cfg.T}, n={cfg.n}, d={cfg.d})")
    echo(f"  unit: drawing one point's raw data takes {1e3 * unit:.2f} ms")
    rows = 200
    for backend in backends:
        for mode, sampler in (("finite", "raw"), ("finite", "stats"), ("population", "raw")):
            n = cfg.n if mode == "finite" else '"population"'

            def spec_text(count, n=n, sampler=sampler, backend=backend):
                return (f'name = "points"\nrepeats = {count}\n[grid]\nmethod = ["lora-ml"]\n[fixed]\n'
                        f'd = {cfg.d}\nk = {cfg.k}\nT = {cfg.T}\nn = {n}\nnoise = {cfg.noise}\nn_ft = 100\n'
                        f'ft_rank = {cfg.k}\nsampler = "{sampler}"\nbackend = "{backend}"\n')
            for workers in (1, 2):
                # spawned workers' start-up varies by seconds: their estimate is the median of three
                per_row, first, failed = _steady_state(spec_text, rows, workers, pairs=1 if workers == 1 else 3)
                row = {"config": cfg.name, "backend": backend, "solver": f"{mode}/{sampler}", "workers": workers,
                       "rows_per_second": 1 / per_row, "ms_per_row": 1e3 * per_row,
                       "data_units_per_row": per_row / unit, "startup_seconds": first - rows * per_row,
                       "failed": failed}
                report.add(**row)
                echo(_line(row))


def _steady_state(spec_text, rows: int, workers: int, pairs: int) -> tuple[float, float, int]:
    """(seconds per row, seconds of the N-row run, failed rows) of ``fastlora sweep`` in steady
    state: the difference of a run of N rows and one of 3N rows, in which start-up (~1-3 s per
    spawned worker to import fastlora and load the kernels) cancels out; the median of ``pairs``."""
    import tempfile

    from .sweep import parse_spec, run_sweep
    estimates, failed = [], 0
    for _ in range(pairs):
        timings = []
        for count in (rows, 3 * rows):
            with tempfile.TemporaryDirectory() as folder:
                started = time.perf_counter()
                failed += run_sweep(parse_spec(spec_text(count), origin="points"), f"{folder}/points.sqlite",
                                    workers=workers, progress=False).failed
                timings.append(time.perf_counter() - started)
        estimates.append(((timings[1] - timings[0]) / (2 * rows), timings[0]))
    per_row, first = sorted(estimates)[len(estimates) // 2]
    return per_row, first, failed


def _line(row: dict) -> str:
    from .tables import fmt
    skip = {"config", "device"}
    return "  " + ", ".join(f"{k}={fmt(v)}" for k, v in row.items() if k not in skip and v is not None)


def _bench_shallow(cfg, backends, repeat, baselines, full_baselines, report, echo):
    """The paper's shallow-network point (DESIGN.md §6): fastlora's default LoRA-ML retraining
    against the paper's procedure (``baselines.paper_shallow``: full-batch AdamW, 40,000 steps)
    on the same data, both evaluating the loss with the fastest available fused kernel, so the
    ratio measures the procedure.  fastlora is timed to the first iteration whose objective is
    at or below the baseline's final one (Σ_t (1/2n) Σ_i (ŷ − y)², both), and run to its own
    convergence; one problem seed (0), and the baseline from its own seeded init.
    """
    from .baselines import paper_shallow
    from .shallow import make_shallow_problem, retrain_shallow
    from .shallow.model import kernel_for
    prob = make_shallow_problem(d=cfg.d, k=cfg.k, T=cfg.T, n=cfg.n, noise=cfg.noise, seed=0, n_test_tasks=0)
    X = np.stack([task.X for task in prob.tasks])
    y = np.stack([task.y for task in prob.tasks])
    n_rows = np.full(cfg.T, cfg.n, dtype=np.int64)
    fused = kernel_for(get_backend("numba" if "numba" in backends else "numpy"))

    def mse_loss_grad(X, y, W, c):  # the paper's MSE (1/n)Σ(ŷ − y)² = 2·L_t, and its gradients
        losses, G, gc = fused(X, y, n_rows, np.ascontiguousarray(W), np.broadcast_to(c, (W.shape[0], c.shape[0])))
        return 2.0 * losses, 2.0 * G, 2.0 * gc

    target = None
    if baselines:
        base = paper_shallow(X, y, cfg.k, steps=40000, seed=0, loss_grad=mse_loss_grad)
        target = base["objective"]
        report.add(config=cfg.name, backend="baseline:paper_shallow", seconds=base["seconds"], objective=target,
                   steps=40000)
        echo(f"  baseline paper_shallow (AdamW, 40,000 steps): {base['seconds']:.2f} s, final objective {target:.6g}")
    for backend in backends:
        def solve(backend=backend, **limits):
            return retrain_shallow(prob, backend=backend, seed=0, **limits)
        solve(max_iter=5)  # compile / load the kernels
        default_seconds = _median_time(solve, repeat)
        res = solve()
        row = {"config": cfg.name, "backend": backend, "solver": "default", "ran": res.info.get("optimizer"),
               "seconds": default_seconds, "iterations": res.n_iter, "converged": res.converged,
               "objective": res.objective, "baseline_objective": target}
        if target is not None:
            hits = np.nonzero(res.history <= target)[0]
            row["reached"] = bool(len(hits))
            row["speedup_vs_paper_full_run"] = base["seconds"] / default_seconds
            if len(hits):
                n_iter = int(hits[0]) + 1
                seconds = _median_time(lambda n_iter=n_iter: solve(max_iter=n_iter, tol=0.0, ftol=0.0), repeat)
                row.update(iterations_to_baseline=n_iter, seconds_to_baseline=seconds,
                           speedup_vs_paper_shallow=base["seconds"] / seconds)
        report.add(**row)
        echo(_line(row))
