"""Small problems solved by the engine (:mod:`fastlora.engine`): a whole solve per problem.

Which solves run there (:func:`covers`): standard retraining, Reptile and LoRA-ML with a
built-in parameterization (``lora``, ``lora_sym``, ``full``) on dense population targets or
finite samples of at most ``ENGINE_MAX_DIM`` dimensions (after the span reduction), on the
numpy backend (the engine's source run as Python) or the numba backend (compiled), without a
callback, with ALS where its adapter step is exact and with any gd optimizer.  Everything
else — plugins, shared parameters, callbacks, large or factored problems, the GPU — runs in
the Python driver (fastlora.solvers.als / gd / reptile / standard), which uses the same rules
(line search, L-BFGS, Anderson mixing, convergence test and status codes).
"""
from __future__ import annotations

import time

import numpy as np

from .. import engine as E
from ..engine.steps import NONE
from ..options import OPTIONS
from ..seeding import as_generator
from ..tasks import prepare_fits
from .als import anderson_depth
from .common import given_A, given_params, scales_its_start

# the largest dimension the engine takes: its products are plain loops, faster than BLAS calls on
# matrices this small and slower beyond (docs/design.md, "The compiled engine")
ENGINE_MAX_DIM = 32

_GD_OPTIMIZERS = {"lbfgs": E.LBFGS, "gd": E.GD, "adam": E.ADAM}


def covers(method: str, solver: str | None, peft, kind: str, backend_name: str, d_out: int, d_in: int,
           callback, options: dict) -> bool:
    """Whether the engine runs this solve (see the module docstring)."""
    if backend_name not in ("numpy", "numba") or callback is not None or kind not in ("dense", "finite"):
        return False
    if max(d_out, d_in) > ENGINE_MAX_DIM:
        return False
    if method in ("standard", "reptile"):
        return True
    code = E.peft_code(peft)
    if code is None:
        return False
    if solver == "gd":
        return True
    step = options.get("adapter_step", "auto")
    if kind == "dense":
        return step in ("auto", "exact")
    return code in (E.LORA, E.FULL) and step in ("auto", "whitened")


def solver_code(method: str, solver: str | None, options: dict) -> int:
    if method == "standard":
        return E.STANDARD
    if method == "reptile":
        return E.REPTILE
    if solver == "als":
        return E.ALS
    return _GD_OPTIMIZERS[options["optimizer"]]


def settings(code: int, options: dict, max_iter: int, tol: float, dtype, d_out: int, d_in: int,
             scale_start: bool = False):
    """The engine's settings of a solve from its validated options."""
    init_A = options.get("init_A", "standard")
    given = not isinstance(init_A, str)
    init = E.START_GIVEN if given else E.START_CODES[init_A]
    if code == E.STANDARD:
        init = E.START_STANDARD
    depth = 0
    if code == E.ALS and options.get("acceleration") == "anderson":
        depth = anderson_depth((d_out, d_in), np.dtype(dtype).itemsize)
    eliminate = E.PROJECTED if options.get("eliminate_A", True) and not given else E.JOINT
    lr = options.get("lr")
    if lr is None and code == E.ADAM:
        lr = OPTIONS["lr"].default_for("adam", "linear")
    reptile = {name: options.get(name, OPTIONS[name].default) for name in ("inner_lr", "inner_steps", "outer_lr")}
    return E.make_settings(code, max_iter=max_iter, tol=tol, dtype=dtype, init=init, depth=depth, lr=lr,
                           eliminate=eliminate, scale_start=scale_start, **reptile)


def starts(code: int, peft, peft_code: int, options: dict, seeds: list, T: int, rank: int, d_out: int, d_in: int,
           dtype):
    """(A0 (P, d_out, d_in), θ0 (P, n)): ``init_A`` and ``init_params`` where given, else zeros
    and each problem's draw of ``peft.init`` from its own seed (gradient solvers only: an ALS
    solve starts from the exact fit at its starting A); the engine scales a drawn lora / lora_sym
    start to the residuals (``scale_start``: :func:`fastlora.engine.steps.start_factor`)."""
    P = len(seeds)
    init_A = options.get("init_A", "standard")
    A0 = np.zeros((P, d_out, d_in), dtype) if isinstance(init_A, str) else given_A(init_A, P, d_out, d_in)
    if peft_code == NONE:
        return A0, np.zeros((P, 0), dtype)
    given = options.get("init_params")
    if given is not None:
        given = given_params(peft, given, P * T, d_out, d_in, rank)
    elif code in (E.ALS, E.FIT_EXACT):
        return A0, np.zeros((P, E.theta_size(peft_code, rank, T, d_out, d_in)), dtype)
    else:
        return A0, _drawn_theta(peft, peft_code, seeds, T, rank, d_out, d_in, dtype)
    return A0, E.theta_of(peft_code, given, P, T, rank, d_out, d_in, dtype)


def _drawn_theta(peft, code: int, seeds: list, T: int, rank: int, d_out: int, d_in: int, dtype):
    """The engine's θ (P, n) of each problem's draw of ``peft.init`` from its own seed (an int,
    SeedSequence or Generator: :func:`~fastlora.seeding.as_generator`).  An int seed means a fresh
    generator, so problems sharing one draw the same start: it is drawn once (a generator costs ~8 µs)."""
    by_int_seed = {}
    drawn = []
    for seed in seeds:
        if isinstance(seed, (int, np.integer)):
            if seed not in by_int_seed:
                by_int_seed[seed] = peft.init(as_generator(seed), d_out, d_in, rank, T)
            drawn.append(by_int_seed[seed])
        else:
            drawn.append(peft.init(as_generator(seed), d_out, d_in, rank, T))
    return E.theta_of(code, {k: np.concatenate([one[k] for one in drawn]) for k in drawn[0]}, len(seeds), T, rank,
                      d_out, d_in, dtype)


def solve(method: str, solver: str | None, peft, rank, problems: list, seeds: list, options: dict, max_iter: int,
          tol: float, dtype, backend, base_sq=None, threads: int | None = None):
    """Solve ``problems`` (lists of tasks of one shape) on the engine.

    Returns ``(solved, info, seconds)``: the engine's :class:`~fastlora.engine.Solved`, the
    ``res.info`` entries common to every problem, and the wall time of preparing the data and
    solving (compiling, or loading compiled code, excluded: ``solved.compile_seconds``).
    """
    T, d_out, d_in = len(problems[0]), problems[0][0].d_out, problems[0][0].d_in
    code = solver_code(method, solver, options)
    pcode = E.peft_code(peft) if method == "lora-ml" else NONE
    cfg = settings(code, options, max_iter, tol, dtype, d_out, d_in,
                   scale_start=scales_its_start(peft) and options.get("init_params") is None)
    spec = E.make_spec(pcode, rank or 1, T, d_out, d_in, peft)
    compiled = backend.name == "numba"
    threads = backend.thread_count(threads) if compiled else 1  # (also: a malformed FASTLORA_NUM_THREADS fails here)
    parallel = compiled and len(problems) >= E.PARALLEL_MIN_PROBLEMS and threads > 1
    fits_compile_seconds = 0.0
    if not problems[0][0].is_population:  # the tasks' fits run compiled code: compiling it is not the solve's time
        fits_compile_seconds = prepare_fits()
    started = time.perf_counter()
    qb = E.quad_batch(problems, dtype, base_sq, need_whiteners=code == E.ALS and not problems[0][0].is_population,
                      need_spectrum=code == E.REPTILE)
    A0, theta0 = starts(code, peft, pcode, options, seeds, T, rank, d_out, d_in, dtype)
    setup = time.perf_counter() - started
    if parallel:
        with backend.running(threads):
            solved = E.run(qb, spec, cfg, A0, theta0, compiled=compiled, parallel=True)
    else:
        solved = E.run(qb, spec, cfg, A0, theta0, compiled=compiled)
    solved.compile_seconds += fits_compile_seconds
    return solved, _info(code, cfg, problems[0][0].is_population, compiled), setup + solved.seconds


def _info(code: int, cfg, population: bool, compiled: bool) -> dict:
    info = {"engine": "compiled" if compiled else "python"}
    if code == E.ALS:
        info.update(solver="als", adapter_step="exact" if population else "whitened", adapter_step_exact=True,
                    acceleration=f"anderson(depth={cfg.depth})" if cfg.depth else "none")
    elif code in (E.LBFGS, E.GD, E.ADAM):
        optimizer = {E.LBFGS: "lbfgs", E.GD: "gd", E.ADAM: "adam"}[code]
        info.update(solver="gd", optimizer=optimizer)
        if code == E.LBFGS:
            info.update(memory=cfg.memory, eliminate_A=cfg.eliminate == E.PROJECTED)
    elif code == E.REPTILE:
        info.update(inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps, outer_lr=cfg.outer_lr)
    return info


def covers_fit(peft, task, backend_name: str) -> bool:
    """Whether the engine fine-tunes ``peft`` on ``task`` (a built-in parameterization, a small task)."""
    return backend_name in ("numpy", "numba") and E.peft_code(peft) is not None \
        and max(task.d_out, task.d_in) <= ENGINE_MAX_DIM


def fit(peft, rank: int, tasks: list, A, seeds: list, max_iter: int, tol: float, dtype, backend):
    """Fine-tune ``peft`` at rank ``rank`` on each task from its A (``A`` (P, d_out, d_in)): the exact
    fit where one exists (population targets; ``lora`` and ``full`` on samples: the whitened fit),
    else L-BFGS over the adapter with A fixed from ``peft.init``'s draw from the task's seed.
    Returns (solved, exact)."""
    code = E.peft_code(peft)
    d_out, d_in = tasks[0].d_out, tasks[0].d_in
    exact = tasks[0].is_population or code in (E.LORA, E.FULL)
    solver = E.FIT_EXACT if exact else E.LBFGS
    cfg = E.make_settings(solver, max_iter=max_iter, tol=tol, dtype=dtype, init=E.START_GIVEN, eliminate=E.FIXED,
                          scale_start=scales_its_start(peft))
    spec = E.make_spec(code, rank, 1, d_out, d_in, peft)
    compiled = backend.name == "numba"
    qb = E.quad_batch([[t] for t in tasks], dtype, need_whiteners=exact and not tasks[0].is_population)
    if exact:
        theta0 = np.zeros((len(tasks), E.theta_size(code, rank, 1, d_out, d_in)), dtype)
    else:
        theta0 = _drawn_theta(peft, code, seeds, 1, rank, d_out, d_in, dtype)
    return E.run(qb, spec, cfg, A, theta0, compiled=compiled), exact
