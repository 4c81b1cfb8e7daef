"""Run a sweep: every unfinished (point, seed) once, on a process pool or a Dask cluster.

Work travels in chunks: :func:`run_rows` runs a list of consecutive rows of one retraining
(one point's repeats, and the points that differ from it only in evaluation keys such as
``n_ft``: same shapes and method) and returns one outcome per row; a row that raises
becomes one error row (``status='error'`` and its message) and the others go on.  Chunks
are sized from each retraining key's measured row time so each takes about ``CHUNK_SECONDS``
(per-task overhead stays small, the progress bar still moves), and at most two per
worker are in flight.

The driver alone writes the store, committing finished rows every ``COMMIT_SECONDS`` or
``COMMIT_ROWS`` rows in one transaction: a kill loses at most that last batch, which a
rerun recomputes (``row_key`` is UNIQUE, so nothing is ever stored twice).  Rerunning
skips finished rows (``retry_errors=True`` reruns the errored ones).

Local workers are spawned processes fed through one pipe each (no multiprocessing queue, so
no named semaphore for the resource tracker to report after a SIGKILLed driver).  They die
with the driver: on Linux the kernel kills them when it goes (``PR_SET_PDEATHSIG``), and
everywhere a watchdog thread in each worker exits when its parent changes or the driver's end
of the stop pipe closes (Ctrl-C, SIGTERM, an error, or the driver's death).  The stop signal
is a pipe, not a multiprocessing Event: an Event's ``set()`` waits for every waiting process
to wake, forever for a worker that was killed.  A worker that dies (killed, out of memory),
or stalls — busy with rows yet given no CPU time for ``stall_timeout`` seconds (stopped by
SIGSTOP, deadlocked), and then killed — breaks the pool: the driver commits what it has,
stops the other workers and raises (one line from the CLI, exit 1); a rerun resumes.
A Dask cluster releases a client's futures when it disconnects, so a dead driver leaves
at most the chunks already executing to finish there; a lost scheduler ends the sweep the
same way as a dead local worker.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import queue
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..config import usable_cores
from ..errors import FastLoRAError
from .spec import (
    DEFAULT_PAIRING,
    Spec,
    canonical,
    dataset_args,
    evaluate_args,
    landscape_args,
    problem_args,
    retrain_args,
    retraining_key,
)
from .store import ResultsStore

CHUNK_SECONDS = 0.5  # target run time of one chunk of rows
MAX_CHUNK_ROWS = 256
COMMIT_SECONDS = 0.5  # the most a kill can lose of finished work
COMMIT_ROWS = 1000
WATCHDOG_SECONDS = 0.25  # how often a worker checks that its driver is alive
STALL_SECONDS = 60.0  # a local worker busy with rows but given no CPU time this long is stalled (stall_timeout)
SHOWN_ERRORS = 3


@dataclass
class SweepSummary:
    """Counts of one run; ``failed``: rows of the spec stored with an error (this run's and
    earlier ones), ``error_messages``: the first few distinct of their messages."""
    total: int
    skipped: int
    done: int
    errors: int
    seconds: float
    interrupted: bool = False
    failed: int = 0
    error_messages: list[str] = field(default_factory=list)
    unconverged: int = 0  # rows done whose retraining or a fine-tuning did not converge (converged, ft_converged)

    def line(self, name: str, out) -> str:
        state = "interrupted" if self.interrupted else "finished"
        unconverged = f", {self.unconverged} not converged" if self.unconverged else ""
        return (f"sweep {name!r} {state}: {self.done} row(s) done ({self.errors} error(s){unconverged}), "
                f"{self.skipped} already in {out}, {self.total} in the spec; {self.seconds:.1f} s")

    def failure_line(self, name: str, out) -> str:
        """One line naming how many rows failed, their first distinct messages and the way out."""
        shown = "; ".join(f"({i}) {m}" for i, m in enumerate(self.error_messages, 1))
        return (f"{self.failed} of {self.total} row(s) of sweep {name!r} failed; first distinct error(s): {shown}; "
                f"fix the cause and rerun with --retry-errors (if the fix changes the spec, first drop the failed "
                f"rows: fastlora store prune {out} --errors)")


@functools.lru_cache(maxsize=1)
def _thread_controller():
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def run_point(point: dict, seed: int, truth_seed: int | None = None) -> dict:
    """make_problem → retrain → evaluate (and a landscape census where the point asks for one)
    for one (point, seed); never raises.  ``truth_seed`` (default ``seed``): the ground truth's seed
    (pairing, fastlora.sweep.spec)."""
    return run_rows([{"point": point, "seed": seed, "truth_seed": seed if truth_seed is None else truth_seed}])[0]


def run_rows(rows: list[dict]) -> list[dict]:
    """The outcomes of a chunk of rows (``Spec.rows()`` entries), in order; never raises for a row.

    The unit of work a worker receives.  Rows that share a retraining (:func:`retraining_key`:
    one point's repeats, which differ only in their seeds, and points that differ only in
    evaluation keys) are retrained together by :func:`fastlora.retrain_many`, each distinct
    (retraining, seed) once — each row gets the numbers it would get alone, whatever the chunk
    — and a row that fails becomes one error row while the others go on.
    """
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(retraining_key(row["point"]), []).append(i)
    outcomes: list[dict | None] = [None] * len(rows)
    with _thread_controller().limit(limits=1, user_api="blas"):
        for indices in groups.values():
            for i, outcome in zip(indices, _run_retraining_rows([rows[i] for i in indices])):
                outcomes[i] = outcome
    return outcomes


def _run_retraining_rows(rows: list[dict]) -> list[dict]:
    """Rows of one retraining key: one problem and one retraining per distinct seed, then each
    row's evaluation (rows with the same evaluation keys evaluated together)."""
    import fastlora as fl
    started = time.perf_counter()
    point = rows[0]["point"]
    failed: dict[int, Exception] = {}
    problems = {}
    # the ground truth's seed of each row's seed (pairing: the row's truth_seed; otherwise the seed itself)
    truth = {row["seed"]: row.get("truth_seed", row["seed"]) for row in rows}
    for seed, made in _make_problems(point, truth).items():
        if isinstance(made, Exception):
            failed[seed] = made
        else:
            problems[seed] = made
    results = {}
    if problems:
        args = retrain_args(point)
        seeds = list(problems)
        try:
            solved = fl.retrain_many(list(problems.values()), threads=1, seeds=seeds, errors="return", **args)
        except Exception as exc:  # noqa: BLE001 - e.g. an option the point's solver does not take
            solved = [exc] * len(seeds)
        for seed, res in zip(seeds, solved):
            if isinstance(res, Exception):
                failed[seed] = res
            else:
                results[seed] = res
    outcomes: list[dict | None] = [None] * len(rows)
    censuses: dict[int, dict] = {}  # a landscape census depends on the retraining key and seed only
    regime = _regime(point)  # so does the theorem's regime
    evaluations: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row["seed"] in failed:
            outcomes[i] = _error(failed[row["seed"]], started)
        else:
            evaluations.setdefault(canonical(evaluate_args(row["point"])), []).append(i)
    for indices in evaluations.values():
        seeds = [rows[i]["seed"] for i in indices]
        try:  # fine-tuning draws follow the truth's seed: paired like the truth across the grid
            metrics = fl.evaluate_many([results[s] for s in seeds], [problems[s] for s in seeds],
                                       seeds=[truth[s] for s in seeds], errors="return",
                                       **evaluate_args(rows[indices[0]]["point"]))
        except Exception as exc:  # noqa: BLE001 - e.g. an evaluation option no row can take
            metrics = [exc] * len(indices)
        for i, seed, m in zip(indices, seeds, metrics):
            try:
                if isinstance(m, Exception):
                    raise m
                outcomes[i] = _outcome(point, seed, problems[seed], results[seed], m, censuses, regime)
            except Exception as exc:  # noqa: BLE001
                outcomes[i] = _error(exc, started)
    host = socket.gethostname()
    for outcome in outcomes:
        outcome["host"] = host
    return outcomes


def _make_problems(point: dict, truth: dict) -> dict:
    """Each seed's problem (``truth``: seed -> its truth's seed), or the exception making it raised: the
    linear model's drawn together (fastlora.problems.make_linear_problems: the same problems, a fraction
    of the Python work per row), any other one by one."""
    seeds = list(truth)
    each = [problem_args(point, seed, truth[seed]) for seed in seeds]  # pairing decides seed and sample_seed
    args = {k: v for k, v in each[0].items() if k not in ("seed", "sample_seed")}
    if (len(seeds) > 1 and dataset_args(point, seeds[0]) is None and args.pop("model", "linear") == "linear"
            and set(args) <= _linear_batch_keys()):
        from ..problems import make_linear_problems
        try:
            return dict(zip(seeds, make_linear_problems([a["seed"] for a in each],
                                                        [a.get("sample_seed") for a in each], **args),
                            strict=True))
        except Exception:  # one by one below: each row its own error
            logging.getLogger(__name__).debug("drawing %d problems together failed; one by one", len(seeds),
                                              exc_info=True)
    made: dict = {}
    for seed in seeds:
        try:
            made[seed] = _make_problem(point, seed, truth[seed])
        except Exception as exc:  # noqa: BLE001 - an erroring row is data, not a crash
            made[seed] = exc
    return made


@functools.cache
def _linear_batch_keys() -> frozenset:
    import inspect

    from ..problems import make_linear_problems
    return frozenset(inspect.signature(make_linear_problems).parameters) - {"seeds", "sample_seeds"}


def _make_problem(point: dict, seed: int, truth_seed: int | None = None):
    """The row's problem: its dataset under the paper's protocol, split by ``seed``
    (fastlora.datasets), or ``make_problem``'s law: the truth drawn from ``truth_seed``, the
    samples from ``seed``."""
    import fastlora as fl
    args = dataset_args(point, seed)
    if args is not None:
        from ..datasets import load
        return load(**args)
    return fl.make_problem(**problem_args(point, seed, truth_seed))


def _regime(point: dict) -> tuple:
    from ..regime import point_regime
    return point_regime(point)


def _outcome(point: dict, seed: int, prob, res, metrics: dict, censuses: dict, regime: tuple) -> dict:
    """A row's stored outcome; ``point``: its retraining's (the census and the regime depend on nothing else)."""
    outcome = {name: metrics.get(name) for name in ("rel_err_A", "adapt_rank", "excess_risk", "test_loss",
                                                    "test_accuracy", "identified", "identification", "ft_converged")}
    in_regime, note = regime
    outcome.update(objective=res.objective, n_iter=res.n_iter, seconds=res.seconds, converged=res.converged,
                   backend_used=res.backend, solver_used=res.info.get("solver", res.solver), status="ok",
                   restarts_reached=res.info.get("restarts_reached", 1), in_regime=in_regime, regime_note=note)
    if point.get("n_starts") is not None:
        if seed not in censuses:
            from ..landscape import landscape_metrics
            censuses[seed] = landscape_metrics(prob, **landscape_args(point, seed))
        outcome.update(censuses[seed])
    return outcome


def _error(exc: BaseException, started: float) -> dict:
    return {"status": "error", "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - started}


def _run_chunk(rows: list[dict]) -> tuple[list[dict], float]:
    """:func:`run_rows` and its wall time, which sizes the next chunks."""
    started = time.perf_counter()
    outcomes = run_rows(rows)
    return outcomes, time.perf_counter() - started


def run_sweep(spec: Spec, out, *, workers: int | None = None, scheduler: str | None = None,
              scheduler_timeout: float = 5.0, retry_errors: bool = False, append: bool = False,
              progress: bool | None = None, echo=None, stall_timeout: float = STALL_SECONDS) -> SweepSummary:
    """Run every unfinished row of ``spec`` into the store at ``out``.

    Refuses (FastLoRAError) a store another sweep is writing, and, unless ``append``, a store
    holding rows of an earlier, different version of ``spec`` or rows of ``spec`` under another
    sweep name.  ``scheduler_timeout``: seconds to wait for a Dask scheduler.  ``stall_timeout``:
    seconds a local worker may run rows without getting any CPU time (stopped, e.g. by SIGSTOP, or
    deadlocked) before it is killed and the sweep ends as for a dead worker.  Ctrl-C (and
    whatever the caller maps onto KeyboardInterrupt) commits the finished rows, stops the
    workers, echoes the summary line and re-raises.
    """
    started = time.perf_counter()
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise FastLoRAError(f"workers={workers!r} must be a positive integer")
    for name, value in (("scheduler_timeout", scheduler_timeout), ("stall_timeout", stall_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise FastLoRAError(f"{name}={value!r} must be a positive number of seconds")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise FastLoRAError(f"scheduler={scheduler!r} must be a Dask scheduler address such as tcp://host:8786, "
                            f"or None for local workers")
    if scheduler and workers is not None:
        raise FastLoRAError(f"workers={workers} sets local worker processes; with scheduler={scheduler!r} the "
                            f"cluster's workers run the rows (start more Dask workers there instead)")
    if workers is not None and workers > usable_cores():
        import warnings

        from ..errors import PerformanceWarning
        warnings.warn(f"workers={workers} is more than the {usable_cores()} usable core(s) of this machine: the "
                      f"extra processes only compete for them (slower, and more memory); use workers={usable_cores()}",
                      PerformanceWarning, stacklevel=2)
    if not scheduler:
        check_backends_here(spec)
    # a cluster is connected before the store is touched: a bad address or a scheduler that is down writes nothing
    cluster = _DaskPool(scheduler, scheduler_timeout) if scheduler else None
    interrupt = None
    try:
        with ResultsStore(out, spec) as store:
            rule = store.adopt_pairing(spec)
            if echo is not None and rule != (spec.pairing or DEFAULT_PAIRING):
                echo(f"note: {out} was made with pairing {rule!r} (a store keeps the rule it was made with; "
                     f"docs/pairing.md)")
            rows = spec.rows(rule)
            stored = store.stored_rows()
            if not append:
                store.check_spec(spec, rows, stored)
            store.remember_spec(spec)
            if retry_errors:
                store.drop_errors(r["row_key"] for r in rows if stored.get(r["row_key"], ("", ""))[1] == "error")
                stored = store.stored_rows()
            pending = [r for r in rows if r["row_key"] not in stored]
            summary = SweepSummary(total=len(rows), skipped=len(rows) - len(pending), done=0, errors=0, seconds=0.0)
            show = sys.stderr.isatty() if progress is None else progress
            bar = _bar(len(pending), spec.name, show)
            committer = _Committer(store, spec, summary, bar)
            try:
                if pending:
                    _drive(pending, workers, cluster, committer, stall_timeout)
            except KeyboardInterrupt as exc:  # also SIGTERM, mapped by the CLI
                summary.interrupted, interrupt = True, exc
            finally:
                committer.flush()
                if bar is not None:
                    bar.close()
            wanted = {r["row_key"] for r in rows}
            failures = [message for key, message in store.errors().items() if key in wanted]
    finally:
        if cluster is not None:
            cluster.close(abort=True)  # a no-op where the sweep ran on it (closed there)
    summary.failed = len(failures)
    summary.error_messages = _distinct_first_lines(failures, SHOWN_ERRORS)
    summary.seconds = time.perf_counter() - started
    if echo is not None:
        echo(summary.line(spec.name, out))
    if interrupt is not None:
        raise interrupt
    return summary


def check_backends_here(spec: Spec) -> None:
    """Refuse, before any work, a backend the spec names that cannot run on this machine (every
    row with it would fail), as ``fl.retrain`` decides it (``get_backend``).  Not for a Dask
    sweep: the cluster's workers may have what the driver lacks."""
    from ..backends import get_backend
    for name in spec.values("backend"):
        try:
            get_backend(name)
        except FastLoRAError as exc:
            raise FastLoRAError(f"sweep {spec.name!r}: {exc}; every row with backend={name!r} would fail on this "
                                f"machine (a Dask cluster whose workers have it: --scheduler)") from None


def _distinct_first_lines(messages: list[str], count: int) -> list[str]:
    """The first ``count`` distinct first lines of ``messages``, in order."""
    distinct: list[str] = []
    for message in messages:
        first = (message or "").strip().split("\n", 1)[0] or "(no message)"
        if first not in distinct:
            distinct.append(first)
        if len(distinct) == count:
            break
    return distinct


def _bar(total: int, name: str, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=name, unit="row", file=sys.stderr, smoothing=0.05)


class _Committer:
    """Buffers finished rows; commits them in one transaction every COMMIT_SECONDS or COMMIT_ROWS."""

    def __init__(self, store: ResultsStore, spec: Spec, summary: SweepSummary, bar):
        self.store, self.spec, self.summary, self.bar = store, spec, summary, bar
        self.buffer: list[tuple[dict, dict]] = []
        self.oldest = 0.0

    def add(self, chunk: list[dict], outcomes: list[dict]) -> None:
        if not self.buffer:
            self.oldest = time.monotonic()
        self.buffer.extend(zip(chunk, outcomes))
        if self.bar is not None:
            errors = self.summary.errors + sum(o["status"] != "ok" for o in outcomes)
            self.bar.set_postfix_str(f"errors={errors}", refresh=False)
            self.bar.update(len(chunk))
        if len(self.buffer) >= COMMIT_ROWS or self.due_in() == 0:
            self.flush()

    def due_in(self) -> float | None:
        """Seconds until the buffered rows must be committed (None: nothing buffered)."""
        if not self.buffer:
            return None
        return max(0.0, self.oldest + COMMIT_SECONDS - time.monotonic())

    def flush(self) -> None:
        if not self.buffer:
            return
        stored = self.store.add_rows(self.spec, self.buffer)
        self.summary.done += sum(stored)
        self.summary.errors += sum(s and o["status"] != "ok" for s, (_, o) in zip(stored, self.buffer))
        self.summary.unconverged += sum(s and (o.get("converged") is False or o.get("ft_converged") is False)
                                        for s, (_, o) in zip(stored, self.buffer))
        self.buffer = []


class _Chunker:
    """Cuts the pending rows into chunks of about CHUNK_SECONDS of work.

    A chunk holds rows of one retraining key only (same shapes and method: what a batched
    solver solves together, and rows of similar cost).  Rows are taken grouped by retraining
    key, then seed, and a chunk never ends inside a (key, seed) group, so each retraining
    runs once.  A key's first chunk is one seed's rows, to measure it; later ones follow its
    measured time per row.  Near the end chunks shrink so the last rows spread over every
    worker.
    """

    def __init__(self, rows: list[dict], workers: int):
        keys_of_points: dict[int, str] = {}  # Spec.rows() shares one dict among a point's repeats
        groups: dict[str, dict[int, list[dict]]] = {}
        for row in rows:
            point = row["point"]
            key = keys_of_points.get(id(point))
            if key is None:
                key = keys_of_points[id(point)] = retraining_key(point)
            groups.setdefault(key, {}).setdefault(row["seed"], []).append(row)
        self.rows, self.keys = [], []
        for key, by_seed in groups.items():
            for seed_rows in by_seed.values():
                self.rows.extend(seed_rows)
                self.keys.extend([key] * len(seed_rows))
        self.workers, self.next = workers, 0
        self.row_seconds: dict[str, float] = {}  # retraining key -> smoothed seconds per row

    def __bool__(self) -> bool:
        return self.next < len(self.rows)

    def take(self) -> list[dict]:
        key = self.keys[self.next]
        estimate = self.row_seconds.get(key)
        size = 1 if estimate is None else round(CHUNK_SECONDS / max(estimate, 1e-9))
        size = max(1, min(size, MAX_CHUNK_ROWS, math.ceil((len(self.rows) - self.next) / self.workers)))
        end = self.next + 1
        while end < min(self.next + size, len(self.rows)) and self.keys[end] == key:
            end += 1
        while end < len(self.rows) and self.keys[end] == key and self.rows[end]["seed"] == self.rows[end - 1]["seed"]:
            end += 1  # the rest of this retraining's rows
        chunk = self.rows[self.next:end]
        self.next = end
        return chunk

    def observe(self, chunk: list[dict], seconds: float) -> None:
        key = retraining_key(chunk[0]["point"])
        per_row = seconds / len(chunk)
        before = self.row_seconds.get(key)
        self.row_seconds[key] = per_row if before is None else 0.5 * (before + per_row)


def _drive(pending: list[dict], workers, cluster, committer: _Committer, stall_timeout: float = 60.0) -> None:
    """Run every pending row on ``cluster`` (a connected :class:`_DaskPool`) or, where it is None,
    on local workers, handing finished chunks to ``committer``."""
    if cluster is not None:
        pool = cluster
    else:
        workers = min(workers or usable_cores(), len(pending))
        pool = _InProcess() if workers == 1 else _LocalPool(workers, stall_timeout)
    finished: queue.SimpleQueue = queue.SimpleQueue()
    chunker = _Chunker(pending, pool.workers)
    in_flight = 0
    clean = False
    try:
        while True:
            while chunker and in_flight < pool.slots:
                chunk = chunker.take()
                pool.submit(chunk).add_done_callback(lambda fut, chunk=chunk: finished.put((chunk, fut)))
                in_flight += 1
            if not in_flight:
                break
            try:
                chunk, fut = finished.get(timeout=committer.due_in())
            except queue.Empty:
                committer.flush()
                continue
            in_flight -= 1
            outcomes, seconds = pool.outcomes(chunk, fut)
            if seconds is not None:
                chunker.observe(chunk, seconds)
            committer.add(chunk, outcomes)
        clean = True
    finally:
        pool.close(abort=not clean)


class _InProcess:
    """One worker: chunks run in the driver, one at a time."""
    workers = slots = 1

    def submit(self, chunk: list[dict]) -> Future:
        fut: Future = Future()
        fut.set_result(_run_chunk(chunk))
        return fut

    def outcomes(self, chunk, fut):
        return fut.result()

    def close(self, abort: bool) -> None:
        pass


class _Worker:
    """One worker process of :class:`_LocalPool`, its end of their pipe and the chunk it runs."""

    def __init__(self, process, conn):
        self.process, self.conn = process, conn
        self.future: Future | None = None  # the chunk it runs (None: idle)
        self.cpu, self.progressed = 0.0, 0.0  # its CPU time and when that last grew


class _LocalPool:
    """Spawned worker processes, each fed chunks through its own pipe, that die with the driver
    (see the module docstring).

    No multiprocessing queue, so no named semaphore: a killed driver leaves the resource tracker
    nothing to clean up or warn about.  A collector thread receives results, starts queued chunks,
    notices a worker that died (its sentinel) and one that stalls: busy, yet given no CPU time for
    ``stall_timeout`` seconds (stopped by SIGSTOP, or deadlocked), which it kills.  Either breaks
    the pool: every unfinished chunk fails with one RuntimeError, its rows stay pending."""

    def __init__(self, workers: int, stall_timeout: float = 60.0):
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")  # forking a process with live thread pools can deadlock
        # the stop signal: workers get the read end, the driver alone holds the write end, so closing
        # it (or the driver's death) wakes every worker's watchdog at once and waits for nobody
        self.stop_reader, self.stop_writer = ctx.Pipe(duplex=False)
        self.workers, self.slots, self.stall_timeout = workers, 2 * workers, stall_timeout
        self._lock = threading.Lock()
        self._queue: list[tuple[list[dict], Future]] = []
        self._broken: str | None = None
        self._closing = False
        self._wake_reader, self._wake_writer = os.pipe()
        self._pool: list[_Worker] = []
        with _workers_ignore_sigint():
            for _ in range(workers):
                here, there = ctx.Pipe(duplex=True)
                process = ctx.Process(target=_worker_main, args=(there, os.getpid(), self.stop_reader), daemon=True,
                                      name="fastlora-worker")
                process.start()
                there.close()
                self._pool.append(_Worker(process, here))
        self._collector = threading.Thread(target=self._collect, name="fastlora-pool", daemon=True)
        self._collector.start()

    def submit(self, chunk: list[dict]) -> Future:
        fut: Future = Future()
        with self._lock:
            if self._broken is not None:
                fut.set_exception(RuntimeError(self._broken))
            else:
                self._queue.append((chunk, fut))
                self._dispatch()
        return fut

    def outcomes(self, chunk, fut):
        return fut.result()

    def _dispatch(self) -> None:
        """Start queued chunks on idle workers (with the lock held)."""
        for worker in self._pool:
            if not self._queue:
                return
            if worker.future is None:
                chunk, fut = self._queue.pop(0)
                worker.future = fut
                worker.cpu, worker.progressed = _cpu_seconds(worker.process.pid), time.monotonic()
                try:
                    worker.conn.send(chunk)
                except OSError:  # it died: its sentinel tells the collector
                    pass

    def _collect(self) -> None:
        try:
            self._collect_until_done()
        except BaseException as exc:  # noqa: BLE001 - never leave the driver waiting on futures nobody will finish
            self._fail_all(f"the worker pool's collector failed ({type(exc).__name__}: {exc})")

    def _fail_all(self, why: str) -> None:
        with self._lock:
            self._broken = self._broken or f"{why}; the rows committed so far are kept: rerun the same command to " \
                                           f"resume"
            pending = [w.future for w in self._pool if w.future is not None] + [f for _, f in self._queue]
            for worker in self._pool:
                worker.future = None
            self._queue.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(RuntimeError(self._broken))

    def _collect_until_done(self) -> None:
        from multiprocessing.connection import wait
        check = min(1.0, self.stall_timeout / 4)
        while True:
            with self._lock:
                if self._closing or self._broken is not None:
                    return
            ready = wait([w.conn for w in self._pool] + [w.process.sentinel for w in self._pool]
                         + [self._wake_reader], timeout=check)
            finished, broken = [], None
            with self._lock:
                if self._closing:
                    return
                for worker in self._pool:
                    if worker.future is not None and worker.conn in ready:
                        try:
                            message = worker.conn.recv()
                        except (EOFError, OSError):
                            continue  # it died: its sentinel says so
                        finished.append((worker.future, message))
                        worker.future = None
                for worker in self._pool:
                    if worker.process.sentinel in ready and broken is None:
                        worker.process.join(0)
                        broken = (f"a worker process died unexpectedly (killed, or out of memory?): exit code "
                                  f"{worker.process.exitcode}")
                    elif worker.future is not None and broken is None:
                        broken = self._stalled(worker)
                if broken is None:
                    self._dispatch()
            for fut, (ok, value) in finished:
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(RuntimeError(f"a worker process failed outside any row: {value}"))
            if broken is not None:
                self._fail_all(broken)
                return

    def _stalled(self, worker: _Worker) -> str | None:
        """Why ``worker`` (busy) counts as stalled, killing it; None while it gets CPU time."""
        cpu = _cpu_seconds(worker.process.pid)
        now = time.monotonic()
        if cpu is None or worker.cpu is None or cpu > worker.cpu:
            worker.cpu, worker.progressed = cpu, now
            return None
        if now - worker.progressed < self.stall_timeout:
            return None
        worker.process.kill()  # SIGKILL ends a stopped process too
        return (f"worker process {worker.process.pid} got no CPU time for {self.stall_timeout:g} s while running "
                f"rows (stopped, e.g. by SIGSTOP, or hung) and was killed (--stall-timeout)")

    def close(self, abort: bool) -> None:
        with self._lock:
            self._closing = True
        os.write(self._wake_writer, b"x")
        self._collector.join()
        if abort:
            self.stop_writer.close()  # the watchdogs end every worker at once, mid-chunk
        for worker in self._pool:
            worker.conn.close()  # an idle worker reads end of file and exits
        deadline = time.monotonic() + 5.0
        for worker in self._pool:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():  # stopped, or stuck where the watchdog cannot run
                worker.process.kill()
                worker.process.join()
        self.stop_writer.close()
        self.stop_reader.close()
        os.close(self._wake_reader)
        os.close(self._wake_writer)


def _cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of process ``pid`` (None where it cannot be read)."""
    try:
        import psutil
        times = psutil.Process(pid).cpu_times()
    except Exception:  # noqa: BLE001 - psutil missing, or the process gone: no reading, no stall verdict
        return None
    return times.user + times.system


def _worker_main(conn, driver_pid: int, stop) -> None:
    """A worker's life: chunks in, (True, (outcomes, seconds)) out, until its pipe closes."""
    _init_worker(driver_pid, stop)
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        try:
            message = (True, _run_chunk(chunk))
        except Exception as exc:  # noqa: BLE001 - rows never raise (run_rows); this is the worker's own failure
            message = (False, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(message)
        except OSError:
            os._exit(0)


@contextlib.contextmanager
def _workers_ignore_sigint():
    """Processes spawned in the block start with SIGINT ignored (a disposition survives exec), so a Ctrl-C while
    they start Python and numpy prints no traceback from them.  The driver ignores it too for the block (measured:
    ~6 ms for 2 workers, ~0.1 s for 16); blocking it instead would not keep it, as the process's other threads
    (BLAS's) take a process-directed SIGINT and drop it while it is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread sets handlers (and gets Ctrl-C)
        return
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        _restore_sigint(handler)


def _restore_sigint(handler) -> None:
    """``signal.signal(SIGINT, handler)``, certainly: signal.signal first runs pending Python handlers, and one
    that raises (the CLI maps SIGTERM onto KeyboardInterrupt) would leave SIGINT ignored; its exception follows."""
    raised = None
    while True:
        try:
            signal.signal(signal.SIGINT, handler)
            break
        except BaseException as exc:  # noqa: BLE001 - re-raised below, once SIGINT is back
            raised = raised or exc
    if raised is not None:
        raise raised


def _init_worker(driver_pid: int, stop) -> None:
    # one solve per core: no nested thread pools in the workers
    os.environ["FASTLORA_NUM_THREADS"] = "1"
    from ..config import reset
    reset()
    # Ctrl-C reaches the whole process group; the driver alone decides when workers stop (ignored from the
    # spawn on where the driver could arrange it: _workers_ignore_sigint)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != driver_pid:  # the driver died before the line above took effect
        os._exit(1)
    threading.Thread(target=_watch_driver, args=(driver_pid, stop), name="fastlora-watchdog", daemon=True).start()


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies — even while a
    compiled kernel holds the GIL and the watchdog thread cannot run."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the watchdog still covers it


def _watch_driver(driver_pid: int, stop) -> None:
    """Exit when the driver closes its end of the stop pipe (``stop``: the read end; it polls
    readable at end of file), or dies (that end closes, or the parent pid changes)."""
    while not stop.poll(WATCHDOG_SECONDS):
        if os.getppid() != driver_pid:
            break
    os._exit(0)  # nothing to flush: only the driver writes the store


class _DaskPool:
    """Chunks as Dask futures; a failed chunk (e.g. KilledWorker after every retry) becomes error rows.

    A lost scheduler is not a row's failure: the client cancels every future it had there, so the
    sweep ends (RuntimeError, exit 1 from the CLI) with its unfinished rows left pending, as for a
    dead local worker, and a rerun resumes.  distributed's own log line about it is left out."""

    def __init__(self, scheduler: str, timeout: float):
        self.address = scheduler
        try:
            from distributed import Client
        except ImportError:
            raise FastLoRAError("--scheduler needs dask.distributed: pip install 'fastlora[dask]'") from None
        try:
            self.client = Client(scheduler, timeout=f"{timeout}s")
        except (ValueError, TypeError) as exc:  # distributed refuses the address: no port, an unknown scheme, ...
            raise FastLoRAError(f"--scheduler {scheduler!r} cannot be used as a Dask scheduler address: {exc}; the "
                                f"form is [SCHEME://]HOST:PORT, e.g. tcp://10.0.0.5:8786 (tcp when no scheme is "
                                f"given)") from None
        except (OSError, TimeoutError) as exc:
            raise FastLoRAError(f"cannot reach the Dask scheduler at {scheduler!r} within {timeout:g} s: {exc}; "
                                f"check the address or raise --scheduler-timeout") from None
        self._quiet = _DropLostSchedulerLogs()
        logging.getLogger("distributed.client").addFilter(self._quiet)
        self.workers = self._threads()
        self._slots, self._counted = 2 * self.workers, time.monotonic()

    def _threads(self) -> int:
        try:
            return max(1, sum(self.client.nthreads().values()))
        except Exception as exc:  # noqa: BLE001 - any failure to reach the scheduler here means it is gone
            raise self._lost(exc) from None

    def _lost(self, exc: BaseException) -> RuntimeError:
        from concurrent.futures import CancelledError
        self._quiet.lost = True  # distributed's own tracebacks about it are noise from here on
        why = "its connection closed" if isinstance(exc, CancelledError) or not str(exc) else \
            f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        return RuntimeError(f"the Dask scheduler at {self.address} was lost mid-sweep ({why}); the rows committed so "
                            f"far are kept and the unfinished ones stay pending: rerun the same command to resume")

    def _is_lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the connection to the scheduler is gone (futures cancelled by the
        client, which fastlora never does while a sweep runs; a closed comm; a closed client)."""
        from concurrent.futures import CancelledError
        return isinstance(exc, (CancelledError, OSError)) or self.client.status not in ("running", "newly-created")

    @property
    def slots(self) -> int:
        """Two chunks per worker thread, recounted every few seconds as workers join or leave."""
        if time.monotonic() - self._counted > 5.0:
            self._slots, self._counted = 2 * self._threads(), time.monotonic()
        return self._slots

    def submit(self, chunk: list[dict]):
        try:
            return self.client.submit(_run_chunk, chunk, key=f"fastlora-{chunk[0]['row_key']}-{len(chunk)}",
                                      pure=False, retries=2)
        except Exception as exc:  # e.g. "ConnectionPool is closed" once the scheduler is gone
            if self._is_lost(exc):
                raise self._lost(exc) from None
            raise

    def outcomes(self, chunk, fut):
        try:
            return fut.result()
        except Exception as exc:  # noqa: BLE001 - the chunk's rows are recorded as errors, the sweep goes on
            if self._is_lost(exc):
                raise self._lost(exc) from None
            error = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "host": "dask"}
            return [dict(error) for _ in chunk], None

    def close(self, abort: bool) -> None:
        try:
            self.client.close()  # releases every future still queued on the cluster
        finally:
            logging.getLogger("distributed.client").removeFilter(self._quiet)


class _DropLostSchedulerLogs(logging.Filter):
    """distributed's messages about the scheduler connection, and all of its client's once the
    scheduler is known lost: the sweep reports a lost scheduler itself, in one line."""

    lost = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage().lower()
        return not (self.lost or "reconnect" in message or "connection to the scheduler" in message
                    or "scheduler-connection-lost" in message)
