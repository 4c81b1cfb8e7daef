"""Running a planned linear retraining (:class:`fastlora.planning.Plan`): on the compiled engine, or
batched on a backend by the Python driver's solvers; results lifted back from a reduced space."""
from __future__ import annotations

import time

import numpy as np

from . import engine as E
from .engine import status
from .errors import FastLoRAError
from .peft.protocol import shared_names
from .planning import Plan
from .reduction import Reduction
from .seeding import as_generator
from .sizing import estimate_bytes
from .solvers import als, gd, reptile, standard
from .solvers import engine as engine_path
from .solvers.common import Context, RetrainResult
from .taskbatch import as_task_list, make_batch, stack_problems
from .tasks import prepare_fits

SOLVER_MODULES = {"standard": standard, "reptile": reptile, "als": als, "gd": gd}
# what res.info["solver"] says for the methods without a solver choice
METHOD_PROCEDURES = {"standard": "closed-form", "reptile": "reptile"}


def run_plan(plan: Plan, problems: list, seeds: list, as_numpy: bool, reductions: list | None = None) -> list:
    """Solve ``problems`` (one batch) under ``plan``; a list of RetrainResult (or exceptions, P > 1).
    ``seeds``: each problem's (an int, SeedSequence or Generator: :func:`~fastlora.seeding.as_generator`;
    a generator is made only where a problem draws)."""
    be = plan.backend
    if plan.reduction is not None:
        reductions = reductions or [plan.reduction]
        problems = [r.tasks for r in reductions]
    if plan.engine:  # the engine compiles what it needs itself, and sets threads only to run problems in parallel
        return _lifted(plan, _solve_on_engine(plan, [as_task_list(p) for p in problems], seeds, reductions),
                       reductions)
    with be.running(plan.threads):
        be.prepare(plan.dtype)  # loading (or compiling) kernels is not part of the solve's time
        if plan.kind == "finite":
            prepare_fits()  # the tasks' least-squares fits run compiled code (fastlora.kernels.fits) too
        started = time.perf_counter()
        try:
            if len(problems) == 1:
                batch = make_batch(as_task_list(problems[0]), be, plan.dtype, factored=plan.factored,
                                   source=problems[0])
            else:
                batch = stack_problems([as_task_list(p) for p in problems], be, plan.dtype, plan.kind)
            if plan.reduction is not None:
                batch.mark_reduction(np.array([r.base_sq for r in reductions]))
            return _lifted(plan, _solve(plan, batch, seeds, as_numpy, started), reductions)
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":  # cupy.cuda.memory.OutOfMemoryError
                need = estimate_bytes(plan.tasks, plan.kind, plan.rank, plan.dtype) * len(problems)
                raise FastLoRAError(f"backend={be.name!r} ran out of device memory: {exc}; the solve needs about "
                                    f"{need / 2**30:.2f} GiB") from None
            raise


def _lifted(plan: Plan, results: list, reductions) -> list:
    """``results`` of reduced problems lifted to the full space (errors as they are); as given otherwise."""
    if plan.reduction is None:
        return results
    return [r if isinstance(r, Exception) else lift(plan, red, r) for r, red in zip(results, reductions)]


def _canonical(peft, params: dict) -> dict:
    """``params`` in the parameterization's canonical form where it has one (``canonicalize``)."""
    canonical = getattr(peft, "canonicalize", None)
    return canonical(params) if params and callable(canonical) else params


def _plan_info(plan: Plan, T: int, d_out: int, d_in: int, P: int) -> dict:
    """The ``res.info`` entries that the plan decides, the same for every problem of the batch."""
    solver = ({"solver": plan.solver, "requested_solver": plan.requested} if plan.method == "lora-ml"
              else {"solver": METHOD_PROCEDURES[plan.method]})  # no solver choice: the method's own procedure
    return {"model": "linear", "batch": plan.kind, "T": T, "d_out": d_out, "d_in": d_in, "batch_size": P, **solver}


def lift(plan: Plan, reduction: Reduction, res: RetrainResult) -> RetrainResult:
    """A reduced problem's result in the full space (:mod:`fastlora.reduction`); its seconds: the
    reduced solve's share, the reduction and this lift."""
    lifting = time.perf_counter()
    be = plan.backend
    E = be.to_numpy(res.A)
    A = reduction.lift_A(E, dense=plan.dense_A)
    params = _canonical(plan.peft, reduction.lift_params(plan.peft, {k: np.asarray(be.to_numpy(v), dtype=np.float64)
                                                                     for k, v in res.params.items()}))
    dtype = np.dtype(plan.dtype)
    params = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in params.items()}
    if plan.dense_A:
        A = np.ascontiguousarray(A, dtype=dtype)
    res.A, res.params = A, params
    res.info.update(reduction={"m_out": reduction.sizes[0], "m_in": reduction.sizes[1],
                               "d_out": reduction.base.shape[0], "d_in": reduction.base.shape[1],
                               "seconds": reduction.seconds}, d_out=reduction.base.shape[0],
                    d_in=reduction.base.shape[1])
    res.seconds += reduction.seconds + time.perf_counter() - lifting
    return res


def _solve(plan: Plan, batch, seeds, as_numpy, started) -> list:
    be, P, T = plan.backend, batch.P, batch.T
    ctx = Context(batch=batch, backend=be, peft=plan.peft, rank=plan.rank, dtype=plan.dtype,
                  rngs=[as_generator(seed) for seed in seeds],
                  max_iter=plan.max_iter, tol=plan.tol, callback=plan.callback, options=plan.options)
    setup = time.perf_counter() - started
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by the monitor, once
        out = SOLVER_MODULES[plan.solver or plan.method].solve(ctx)
    params = _canonical(plan.peft, out.params)
    shared = {**out.shared, **{k: params[k] for k in shared_names(plan.peft) if k in params}}  # P = 1 here
    params = {k: v for k, v in params.items() if k not in shared}
    be.synchronize()
    seconds = (time.perf_counter() - started) / P
    A = out.A
    if as_numpy:
        A = np.ascontiguousarray(be.to_numpy(A))
        params = {k: np.ascontiguousarray(be.to_numpy(v)) for k, v in params.items()}
        shared = {k: np.ascontiguousarray(be.to_numpy(v)) for k, v in shared.items()}
        del batch, ctx  # the device copies of the tasks: free them before releasing the pool
        be.release()
    results = []
    for p in range(P):
        if out.errors[p] is not None:
            results.append(out.errors[p])
            continue
        info = {**out.info, "setup_seconds": setup / P, **_plan_info(plan, T, plan.d_out, plan.d_in, P),
                "message": out.messages[p]}
        history = out.histories[p]
        results.append(RetrainResult(
            A=A[p], params={k: v[p * T:(p + 1) * T] for k, v in params.items()},
            objective=history[-1] if history else float("nan"), history=np.asarray(history), n_iter=out.n_iter[p],
            converged=out.converged[p], seconds=seconds, method=plan.method, solver=plan.solver, peft=plan.peft,
            rank=plan.rank, backend=be.name, dtype=np.dtype(plan.dtype).name, message=out.messages[p], info=info,
            shared=shared if P == 1 else {k: v[p] for k, v in shared.items()}))
    return results


def _solve_on_engine(plan: Plan, problems: list, seeds: list, reductions) -> list:
    """Solve ``problems`` (lists of tasks) on the engine (fastlora.solvers.engine); RetrainResults or errors."""
    base_sq = None if reductions is None else [r.base_sq for r in reductions]
    solved, info, seconds = engine_path.solve(plan.method, plan.solver, plan.peft, plan.rank, problems, seeds,
                                              plan.options, plan.max_iter, plan.tol, plan.dtype, plan.backend,
                                              base_sq, plan.threads)
    P, T, d_out, d_in = len(problems), len(problems[0]), problems[0][0].d_out, problems[0][0].d_in
    params = {}
    if plan.method == "lora-ml":
        params = _canonical(plan.peft, E.params_of(E.peft_code(plan.peft), solved.theta, T, plan.rank, d_out, d_in))
    info.update(_plan_info(plan, T, d_out, d_in, P), compile_seconds=solved.compile_seconds)
    results = []
    step = status.step_option(plan.method, info.get("solver"), info.get("optimizer"))
    for p in range(P):
        message, converged, error = solved.outcome(p, plan.max_iter, step)
        if error is not None:
            results.append(error)
            continue
        objective = float(solved.objective[p])
        history = np.array(solved.histories[p], dtype=np.float64)  # a copy: the batch's array is not kept
        if history.size:
            history[-1] = objective  # the last entry: F at the returned point
        else:
            history = np.array([objective])
        own = dict(info, message=message)
        if info.get("acceleration", "none") != "none":
            own.update(extrapolations_accepted=int(solved.accepted[p]),
                       extrapolations_rejected=int(solved.rejected[p]))
        if info.get("optimizer") == "gd":
            own["final_lr"] = float(solved.step[p])
        results.append(RetrainResult(
            A=solved.A[p], params={k: v[p * T:(p + 1) * T] for k, v in params.items()}, objective=objective,
            history=history, n_iter=int(solved.n_iter[p]), converged=converged, seconds=seconds / P,
            method=plan.method, solver=plan.solver, peft=plan.peft, rank=plan.rank, backend=plan.backend.name,
            dtype=np.dtype(plan.dtype).name, message=message, info=own))
    return results
