"""Run a sweep: every unfinished (point, seed) once, on a process pool or a Dask cluster.

The driver alone writes the store, one committed row per finished (point, seed).  A
point that raises is stored with ``status='error'`` and its message; the sweep goes on.
Rerunning skips finished rows (``retry_errors=True`` reruns the errored ones).
"""
from __future__ import annotations

import functools
import os
import socket
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from ..config import usable_cores
from ..errors import FastLoRAError
from .spec import Spec, evaluate_args, problem_args, retrain_args
from .store import ResultsStore


@dataclass
class SweepSummary:
    total: int
    skipped: int
    done: int
    errors: int
    seconds: float
    interrupted: bool = False

    def line(self, name: str, out) -> str:
        state = "interrupted" if self.interrupted else "finished"
        return (f"sweep {name!r} {state}: {self.done} row(s) done ({self.errors} error(s)), "
                f"{self.skipped} already in {out}, {self.total} in the spec; {self.seconds:.1f} s")


@functools.lru_cache(maxsize=1)
def _thread_controller():
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def run_point(point: dict, seed: int) -> dict:
    """make_problem → retrain → evaluate for one (point, seed); never raises."""
    import fastlora as fl
    started = time.perf_counter()
    try:
        with _thread_controller().limit(limits=1, user_api="blas"):
            prob = fl.make_problem(**problem_args(point, seed))
            res = fl.retrain(prob, threads=1, **retrain_args(point, seed))
            metrics = fl.evaluate(res, prob, **evaluate_args(point, seed))
        outcome = {name: metrics.get(name) for name in ("rel_err_A", "adapt_rank", "excess_risk")}
        outcome.update(objective=res.objective, n_iter=res.n_iter, seconds=res.seconds, converged=res.converged,
                       status="ok")
    except Exception as exc:  # noqa: BLE001 - an erroring point is data, not a crash
        outcome = {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                   "seconds": time.perf_counter() - started}
    outcome["host"] = socket.gethostname()
    return outcome


def _init_worker() -> None:
    # one solve per core: no nested thread pools in the workers
    os.environ["FASTLORA_NUM_THREADS"] = "1"
    from ..config import reset
    reset()


def run_sweep(spec: Spec, out, *, workers: int | None = None, scheduler: str | None = None,
              retry_errors: bool = False, progress: bool | None = None, echo=None) -> SweepSummary:
    """Run every unfinished row of ``spec`` into the store at ``out``."""
    started = time.perf_counter()
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise FastLoRAError(f"workers={workers!r} must be a positive integer")
    store = ResultsStore(out, spec)
    try:
        store.remember_spec(spec)
        rows = spec.rows()
        if retry_errors:
            store.drop_errors(r["row_key"] for r in rows)
        finished = store.finished_keys()
        pending = [r for r in rows if r["row_key"] not in finished]
        summary = SweepSummary(total=len(rows), skipped=len(rows) - len(pending), done=0, errors=0, seconds=0.0)
        show = sys.stderr.isatty() if progress is None else progress
        bar = _bar(len(pending), spec.name, show)
        try:
            for row, outcome in _execute(pending, workers, scheduler):
                if store.add(spec, row, outcome):
                    summary.done += 1
                    summary.errors += outcome["status"] != "ok"
                if bar is not None:
                    bar.set_postfix_str(f"errors={summary.errors}", refresh=False)
                    bar.update(1)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            if bar is not None:
                bar.close()
    finally:
        store.close()
    summary.seconds = time.perf_counter() - started
    if echo is not None:
        echo(summary.line(spec.name, out))
    if summary.interrupted:
        raise KeyboardInterrupt
    return summary


def _bar(total: int, name: str, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=name, unit="row", file=sys.stderr, smoothing=0.05)


def _execute(pending, workers, scheduler):
    """Yield (row, outcome) as rows finish, in completion order."""
    if not pending:
        return
    if scheduler:
        yield from _execute_dask(pending, scheduler)
        return
    workers = min(workers or usable_cores(), len(pending))
    if workers == 1:
        for row in pending:
            yield row, run_point(row["point"], row["seed"])
        return
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")  # forking a process with live thread pools can deadlock
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
    try:
        futures = {pool.submit(run_point, row["point"], row["seed"]): row for row in pending}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _execute_dask(pending, scheduler: str):
    try:
        from distributed import Client, as_completed as dask_completed
    except ImportError:
        raise FastLoRAError("--scheduler needs dask.distributed: pip install 'fastlora[dask]'") from None
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise FastLoRAError(f"cannot reach the Dask scheduler at {scheduler!r}: {exc}") from None
    try:
        futures = {}
        for row in pending:
            fut = client.submit(run_point, row["point"], row["seed"], key=f"fastlora-{row['row_key']}", pure=False,
                                retries=2)
            futures[fut] = row
        for fut in dask_completed(list(futures)):
            row = futures[fut]
            try:
                outcome = fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker after every retry
                outcome = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "host": "dask"}
            yield row, outcome
    finally:
        client.close()
