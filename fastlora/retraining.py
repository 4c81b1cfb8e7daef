"""The linear model's retraining (``fastlora.retrain`` and ``retrain_many`` dispatch here through
:mod:`fastlora.models`): standard retraining, LoRA-ML (ALS or gradient methods) and Reptile."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import options as schema
from . import peft as peft_registry
from .backends import get_backend, resolve_dtype
from .config import format_bytes, require_memory
from .errors import ERRORS_CHOICES, FastLoRAError, check_choice, check_list, per_entry
from .implicit import is_implicit
from .peft.protocol import check_shape_supported, shared_names
from .reduction import Reduction, plan_reduction
from .restarts import check_restarts, retrain_many_with_restarts, retrain_with_restarts
from .seeding import as_generator
from .solvers import als, gd, reptile, standard
from .solvers import engine as engine_path
from .solvers.adapters import check_als_supported
from .solvers.auto import choose_solver
from .solvers.common import Context, RetrainResult
from .taskbatch import as_task_list, batch_kind, is_small, make_batch, stack_problems
from .tasks import LowRankTarget

_SOLVER_MODULES = {"standard": standard, "reptile": reptile, "als": als, "gd": gd}




def retrain(problem_or_tasks, method: str = "lora-ml", peft="lora_sym", rank: int | None = None,
            solver: str = "auto", backend: str = "auto", max_iter: int | None = None, tol: float | None = None,
            seed=0, *,
            dtype="float64", threads: int | None = None, callback=None, as_numpy: bool = True, dense_A: bool = True,
            peft_options: dict | None = None, **options) -> RetrainResult:
    """Retrain a shared A on T tasks.

    Parameters
    ----------
    problem_or_tasks : Problem, Task or list of Task
        The retraining tasks (all population or all finite-sample, same shape).
    method : {"standard", "lora-ml", "reptile"}
        ``standard``: argmin_A Σ_t L_t(A) in closed form.  ``lora-ml``: argmin over A and
        θ_1..θ_T of Σ_t L_t(A + Δ_p(θ_t)).  ``reptile``: first-order meta-learning baseline.
    peft : str, class or instance
        The parameterization p of LoRA-ML (a registered name, see ``fastlora.peft.available()``).
        ``peft``, ``rank``, ``solver`` and ``peft_options`` are checked for every method; standard
        retraining and Reptile use none of them (as in sweeps, where rows record them).
    rank : int
        Adapter rank r, 1 <= r <= min(d_out, d_in); defaults to the problem's k.
    solver : {"auto", "als", "gd"}
        LoRA-ML solver.  ``auto`` (default) picks per problem kind — see
        :mod:`fastlora.solvers.auto` for the table; the choice is in ``res.info["solver"]``.
        ``als``: alternating exact minimisation (adapter steps in ``fastlora.solvers.adapters``)
        with safeguarded Anderson extrapolation; ``gd``: joint gradient descent / Adam / L-BFGS.
    backend : {"auto", "numpy", "numba", "cupy"}
    max_iter, tol : iteration limit and relative tolerance (default 1000 and 1e-10; see the
        options below).  Shallow-network problems (``make_problem(model="shallow")``) are
        retrained by :func:`fastlora.shallow.retrain_shallow`, with its own defaults and options.
    seed : int or numpy Generator — every random draw (initialisation) comes from it.
    restarts : N seeded starts, the lowest objective kept, ``info["restarts_reached"]`` how many
        reached it (default 1; :mod:`fastlora.restarts`; the shallow network's default is its own).
    dtype : "float64" (default) or "float32".
    threads : Numba threads for large kernels (numba backend; restored after the call).
    dense_A : return ``res.A`` as a dense array (default).  ``False``: where the problem was
        solved in the span of the task factors (:mod:`fastlora.reduction`), ``res.A`` is the
        :class:`~fastlora.linop.LowRankUpdate` S + Q_out E Q_inᵀ — no d_out × d_in array.
    callback : called as ``callback(iteration, elapsed_seconds, objective)`` after each iteration.
    as_numpy : return numpy arrays (default) rather than the backend's.
    peft_options : keyword arguments for the parameterization class, e.g. ``{"alpha": 16}``.
    **options : solver options (each applies to the solvers named):

{options}
    """
    restarts = check_restarts(options.pop("restarts", None))  # several seeded starts: fastlora.restarts
    if restarts > 1:
        if callback is not None:
            raise FastLoRAError("callback is not called with restarts > 1 (the starts are solved in one batch)")
        return retrain_with_restarts(retrain_many, problem_or_tasks, restarts, seed, dict(
            method=method, peft=peft, rank=rank, solver=solver, backend=backend, max_iter=max_iter, tol=tol,
            dtype=dtype, threads=threads, as_numpy=as_numpy, dense_A=dense_A, peft_options=peft_options, **options))
    plan = _plan(problem_or_tasks, method, peft, rank, solver, backend, max_iter, tol, seed, dtype, threads, callback,
                 peft_options, options, dense_A)
    return _raise_or_return(_run(plan, [problem_or_tasks], [plan.rng], as_numpy), "raise")[0]


def retrain_many(problems, method: str = "lora-ml", peft="lora_sym", rank: int | None = None,
                 solver: str = "auto", backend: str = "auto", max_iter: int | None = None, tol: float | None = None,
                 seeds=0, *,
                 dtype="float64", threads: int | None = None, as_numpy: bool = True, dense_A: bool = True,
                 peft_options: dict | None = None, errors: str = "raise", **options) -> list:
    """Retrain many problems of one shape in one batched solve; the same arguments as :func:`retrain`.

    ``problems``: Problems (or lists of Tasks) with the same T, d_out, d_in and sample mode.
    ``seeds``: one seed for all, or one per problem.  Small problems (d ≤ ``DENSE_MAX_DIM``;
    dense targets and finite samples) are stacked on a leading problem axis and iterate
    together — every operation is per problem, so each result is identical to
    ``retrain(problem, seed=its_seed)`` whatever the batch; larger factored problems are
    solved one after another.  ``errors="return"`` puts the exception of a problem that
    fails (e.g. diverges) in its place in the list and goes on with the others;
    ``errors="raise"`` raises the first.
    """
    check_choice("errors", errors, ERRORS_CHOICES)
    problems = check_list("problems", problems, "problem: a Problem or a list of Tasks; for one problem use "
                          "fastlora.retrain")
    if not problems:
        return []
    seeds = per_entry("seeds", seeds, len(problems), "problem")
    if rank is None:  # each problem's default rank is its own k: one batched solve has one rank
        ks = sorted({getattr(p, "k", None) for p in problems}, key=str)
        if len(ks) > 1:
            raise FastLoRAError(f"problems have different k ({', '.join(map(str, ks))}) and rank is not given: "
                                f"retrain_many solves at one rank; pass rank=, or call it once per k")
    restarts = check_restarts(options.pop("restarts", None))  # several seeded starts: fastlora.restarts
    if restarts > 1:
        return retrain_many_with_restarts(retrain_many, problems, seeds, restarts, errors, dict(
            method=method, peft=peft, rank=rank, solver=solver, backend=backend, max_iter=max_iter, tol=tol,
            dtype=dtype, threads=threads, as_numpy=as_numpy, dense_A=dense_A, peft_options=peft_options, **options))
    plan = _plan(problems[0], method, peft, rank, solver, backend, max_iter, tol, seeds[0], dtype, threads, None,
                 peft_options, options, dense_A)
    first = as_task_list(problems[0])
    shape = (len(first), first[0].d_out, first[0].d_in, first[0].is_population)
    for i, problem in enumerate(problems):
        tasks = as_task_list(problem)
        if (len(tasks), tasks[0].d_out, tasks[0].d_in, tasks[0].is_population) != shape:
            raise FastLoRAError(f"problems[{i}] has (T, d_out, d_in, population) = "
                                f"{(len(tasks), tasks[0].d_out, tasks[0].d_in, tasks[0].is_population)}; "
                                f"problems[0] has {shape}: retrain_many solves problems of one shape")
    rngs = [as_generator(schema.OPTIONS["seed"].check(s)) for s in seeds]
    stackable = plan.kind != "factored" and not shared_names(plan.peft) and not getattr(plan.peft, "uses_base", False)
    reductions = None
    if stackable and plan.reduction is not None:
        reductions = [plan.reduction] + [plan.reduce(p) for p in problems[1:]]
        stackable = len({r.sizes if r is not None else None for r in reductions}) == 1
    if not stackable:  # large structured problems (or reductions of different sizes): one at a time
        known = reductions or [plan.reduction] + [_UNPLANNED] * (len(problems) - 1)
        out = []
        for i, (problem, rng) in enumerate(zip(problems, rngs)):
            try:
                own = _starts_of_problem(options, i, len(problems), plan.T, shared_names(plan.peft))
                out.append(_run(_plan(problem, method, peft, rank, solver, backend, max_iter, tol, rng, dtype, threads,
                                      None, peft_options, own, dense_A, reduction=known[i]),
                                [problem], [rng], as_numpy)[0])
            except FastLoRAError as exc:
                if errors == "raise":
                    raise
                out.append(exc)
        return out
    return _raise_or_return(_run(plan, problems, rngs, as_numpy, reductions), errors)


def _raise_or_return(results: list, errors: str) -> list:
    """The one place where a failed problem's error is raised (``errors="raise"``: the first) or left
    in its place in the list (``"return"``) — the same for one problem and for many."""
    if errors == "raise":
        for r in results:
            if isinstance(r, Exception):
                raise r
    return results


# what res.info["solver"] says for the methods without a solver choice
METHOD_PROCEDURES = {"standard": "closed-form", "reptile": "reptile"}


def _starts_of_problem(options: dict, i: int, P: int, T: int, shared=()) -> dict:
    """``options`` for problem ``i`` of ``P`` solved alone: its slice of stacked starts
    (``init_A`` (P, d_out, d_in) — a 2-d one is shared by all —, per-task ``init_params``
    (P·T, ...); shared parameters (no task axis) stay as given)."""
    own = dict(options)
    A0 = options.get("init_A")
    if A0 is not None and not isinstance(A0, str) and np.ndim(A0) == 3 and P > 1:
        own["init_A"] = A0[i:i + 1]
    given = options.get("init_params")
    if given is not None and P > 1:
        own["init_params"] = {}
        for k, v in given.items():
            if k not in shared and np.shape(v)[:1] != (P * T,):  # as the stacked solve requires
                raise FastLoRAError(f"init_params[{k!r}] has shape {np.shape(v)}; {P} problems of {T} tasks need "
                                    f"one start per task of every problem: {P * T} along the first axis")
            own["init_params"][k] = v if k in shared else v[i * T:(i + 1) * T]
    return own


@dataclass
class _Plan:
    """A validated solve: everything but the problems' data and generators."""

    tasks: list
    kind: str
    factored: str                        # taskbatch.batch_kind's choice: "auto" | "always"
    method: str
    solver: str | None
    requested: str
    peft: object
    rank: int | None
    backend: object
    dtype: object
    threads: int | None
    max_iter: int
    tol: float
    callback: object
    options: dict
    rng: object
    reduction: Reduction | None = None    # of the first problem; the plan describes the reduced solve
    dense_A: bool = True
    engine: bool = False                  # solved by fastlora.engine (fastlora.solvers.engine.covers)

    @property
    def T(self) -> int:
        return len(self.tasks)

    @property
    def d_out(self) -> int:
        return self.tasks[0].d_out

    @property
    def d_in(self) -> int:
        return self.tasks[0].d_in

    def reduce(self, problem) -> Reduction | None:
        return plan_reduction(problem, as_task_list(problem), self.peft, self.reduction_options)

    @property
    def reduction_options(self) -> dict:
        return {**self.options, "reduction": "auto"}


_UNPLANNED = object()  # _plan's reduction argument: not decided yet


def _plan(problem_or_tasks, method, peft, rank, solver, backend, max_iter, tol, seed, dtype, threads, callback,
          peft_options, options, dense_A=True, reduction=_UNPLANNED) -> _Plan:
    """The validated solve; ``reduction``: the problem's Reduction (or None) where already planned."""
    method = schema.OPTIONS["method"].check(method)
    solver = schema.OPTIONS["solver"].check(solver)
    tasks = as_task_list(problem_or_tasks)
    d_out, d_in = tasks[0].d_out, tasks[0].d_in
    if method != "lora-ml":
        _check_adapter_arguments(method, peft, rank, peft_options, d_out, d_in)
    max_iter = schema.OPTIONS["max_iter"].resolve(max_iter, "retrain", "linear")
    tol = schema.OPTIONS["tol"].resolve(tol, "retrain", "linear")
    threads = schema.OPTIONS["threads"].check(threads)
    dtype = resolve_dtype(dtype)
    rng = as_generator(schema.OPTIONS["seed"].check(seed))
    if callback is not None and not callable(callback):
        raise FastLoRAError("callback must be callable as callback(iteration, elapsed, objective)")
    dense_A = schema.OPTIONS["dense_A"].check(dense_A)
    factored = "always" if options.get("adapter_step") == "subspace" else "auto"
    be = get_backend(backend)
    planned, reduction = reduction is not _UNPLANNED, None if reduction is _UNPLANNED else reduction
    parameterization, source = None, problem_or_tasks
    requested = solver
    if dense_A and _implicit_base(problem_or_tasks, tasks) is not None:  # before any work on the problem
        require_memory(3 * 8 * d_out * d_in, f"a dense A for this implicit A* (d={d_in})",
                       "pass dense_A=False (A = S + Q E Qᵀ as a LowRankUpdate)")
    if method == "lora-ml":
        rank = schema.OPTIONS["rank"].check(schema.rank_or_problem_k(rank, problem_or_tasks))
        if rank > min(d_out, d_in):
            raise FastLoRAError(f"rank={rank} is too large; it must be <= min(d_out, d_in) = {min(d_out, d_in)}")
        parameterization = peft_registry.get(peft, **(peft_options or {}))
        check_shape_supported(parameterization, d_out, d_in)
        if schema.OPTIONS["reduction"].check(options.get("reduction", "auto")) == "auto" and not planned:
            reduction = plan_reduction(problem_or_tasks, tasks, parameterization, options)
        if reduction is not None:
            tasks, source = reduction.tasks, reduction.tasks
    kind = batch_kind(tasks, factored=factored, source=source)
    if method == "lora-ml":
        if solver == "auto":
            solver, options = _resolve_auto(kind, parameterization, be.name, options)
    else:
        solver = None
    options = schema.check_solver_options(method, solver, options)
    if solver == "als":
        check_als_supported(parameterization, options["adapter_step"])
    _check_memory(be, tasks, kind, rank, dtype)
    on_engine = engine_path.covers(method, solver, parameterization, kind, be.name, tasks[0].d_out, tasks[0].d_in,
                                   callback, options)
    return _Plan(tasks, kind, factored, method, solver, requested, parameterization, rank, be, dtype, threads,
                 max_iter, tol, callback, options, rng, reduction, dense_A, on_engine)


def _implicit_base(problem_or_tasks, tasks):
    """The implicit shared A* (fastlora.implicit) of a problem or of factored tasks, else None."""
    base = getattr(problem_or_tasks, "A_star", None)
    if base is None and tasks and isinstance(getattr(tasks[0], "target", None), LowRankTarget):
        base = tasks[0].target.base
    return base if is_implicit(base) else None


def _check_adapter_arguments(method: str, peft, rank, peft_options, d_out: int, d_in: int) -> None:
    """Standard retraining and Reptile fit A alone: they check the adapter arguments as LoRA-ML
    would (an unknown peft or an impossible rank is an error for every method) and ignore valid
    ones, as sweeps do, so one call can loop over methods."""
    peft_registry.get(peft, **(peft_options or {}))
    if rank is not None:
        rank = schema.OPTIONS["rank"].check(rank)
        if rank > min(d_out, d_in):
            raise FastLoRAError(f"rank={rank} is too large; it must be <= min(d_out, d_in) = {min(d_out, d_in)} "
                                f"(method={method!r} uses no adapters, but checks rank as LoRA-ML would)")


def _run(plan: _Plan, problems: list, rngs: list, as_numpy: bool, reductions: list | None = None) -> list:
    """Solve ``problems`` (one batch) under ``plan``; a list of RetrainResult (or exceptions, P > 1)."""
    be = plan.backend
    if plan.reduction is not None:
        reductions = reductions or [plan.reduction]
        problems = [r.tasks for r in reductions]
    if plan.engine:  # the engine compiles what it needs itself, and sets threads only to run problems in parallel
        results = _solve_on_engine(plan, [as_task_list(p) for p in problems], rngs, reductions)
        if plan.reduction is not None:
            results = [r if isinstance(r, Exception) else _lift(plan, red, r) for r, red in zip(results, reductions)]
        return results
    with be.running(plan.threads):
        be.prepare(plan.dtype)  # loading (or compiling) kernels is not part of the solve's time
        started = time.perf_counter()
        try:
            if len(problems) == 1:
                batch = make_batch(as_task_list(problems[0]), be, plan.dtype, factored=plan.factored,
                                   source=problems[0])
            else:
                batch = stack_problems([as_task_list(p) for p in problems], be, plan.dtype, plan.kind)
            if plan.reduction is not None:
                batch.mark_reduction(np.array([r.base_sq for r in reductions]))
            results = _solve(plan, batch, rngs, as_numpy, started)
            if plan.reduction is not None:
                results = [r if isinstance(r, Exception) else _lift(plan, red, r)
                           for r, red in zip(results, reductions)]
            return results
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":  # cupy.cuda.memory.OutOfMemoryError
                need = _estimate_bytes(plan.tasks, plan.kind, plan.rank, plan.dtype) * len(problems)
                raise FastLoRAError(f"backend={be.name!r} ran out of device memory: {exc}; the solve needs about "
                                    f"{need / 2**30:.2f} GiB") from None
            raise


retrain.__doc__ = retrain.__doc__.replace("{options}", schema.table(schema.SOLVER))


def _resolve_auto(kind, peft, backend_name, options) -> tuple[str, dict]:
    """solver="auto": options that only one solver reads choose it (``adapter_step`` means ALS,
    ``optimizer`` gd); otherwise the table of :mod:`fastlora.solvers.auto` decides."""
    als_only = set(schema.solver_options("lora-ml", "als")) - set(schema.solver_options("lora-ml", "gd"))
    gd_only = set(schema.solver_options("lora-ml", "gd")) - set(schema.solver_options("lora-ml", "als"))
    asked_als, asked_gd = sorted(set(options) & als_only), sorted(set(options) & gd_only)
    if asked_als and asked_gd:
        raise FastLoRAError(f"options {', '.join(asked_als)} belong to solver='als' and {', '.join(asked_gd)} to "
                            f"solver='gd'; pass one solver explicitly")
    if asked_als:
        return "als", options
    if asked_gd:
        return "gd", options
    solver, preferred = choose_solver(kind, peft, backend_name)
    return solver, {**preferred, **options}


def _estimate_bytes(tasks, kind, rank, dtype) -> int:
    T, d_out, d_in = len(tasks), tasks[0].d_out, tasks[0].d_in
    k = max(t.target.B.shape[1] for t in tasks) if kind == "factored" else 0
    return solve_bytes(kind, T, d_out, d_in, k, rank, dtype)


def solve_bytes(kind: str, T: int, d_out: int, d_in: int, k: int, rank: int | None, dtype) -> int:
    """Working memory of a solve: ~8 shared (d_out × d_in) arrays plus ~6 (T, r, d) factor
    arrays for factored targets (``k``: their rank), or ~4 (T, d_out, d_in) arrays for dense /
    finite-sample tasks (``kind``: :func:`fastlora.taskbatch.batch_kind`)."""
    item = np.dtype(dtype).itemsize
    if kind == "factored":
        return item * (8 * d_out * d_in + 6 * T * max(rank or k, k) * max(d_out, d_in))
    return item * (4 * T * d_out * d_in + 8 * d_out * d_in)


def check_solve_size(T: int, d_out: int, d_in: int, k: int, rank: int | None, population: bool, dtype) -> None:
    """What :func:`retrain` refuses on the CPU for a problem of these sizes, known without its data
    (a sweep spec's point): the solve's working memory (make_problem's law; a population problem's
    factored targets solve in the span of their factors where that is smaller)."""
    kind = "finite" if not population else ("dense" if is_small(d_out, d_in) else "factored")
    if kind == "factored" and 2 * T * k < min(d_out, d_in):
        return  # solved in m <= 2·T·k dimensions (fastlora.reduction): smaller than drawing the problem
    require_memory(solve_bytes(kind, T, d_out, d_in, k, rank, resolve_dtype(dtype)),
                   f"retraining T={T} tasks of shape ({d_out}, {d_in})", _MEMORY_ADVICE)


_MEMORY_ADVICE = "use dtype='float32', fewer tasks, or factored (population) targets"


def _check_memory(be, tasks, kind, rank, dtype) -> None:
    need = _estimate_bytes(tasks, kind, rank, dtype)
    advice = _MEMORY_ADVICE
    free = be.free_bytes()
    if free is None:  # the CPU: against the machine's available memory
        require_memory(need, f"this solve on backend {be.name!r}", advice)
    elif need > free:
        raise FastLoRAError(f"this problem needs about {format_bytes(need)} of {be.name} device memory but only "
                            f"{format_bytes(free)} is free; {advice}, or backend='numba'")


def _lift(plan: _Plan, reduction: Reduction, res: RetrainResult) -> RetrainResult:
    """A reduced problem's result in the full space (:mod:`fastlora.reduction`); its seconds: the
    reduced solve's share, the reduction and this lift."""
    lifting = time.perf_counter()
    be = plan.backend
    E = be.to_numpy(res.A)
    A = reduction.lift_A(E, dense=plan.dense_A)
    params = reduction.lift_params(plan.peft, {k: np.asarray(be.to_numpy(v), dtype=np.float64)
                                                for k, v in res.params.items()})
    canonical = getattr(plan.peft, "canonicalize", None)
    if params and callable(canonical):
        params = canonical(params)
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


def _solve(plan: _Plan, batch, rngs, as_numpy, started) -> list:
    be, P, T = plan.backend, batch.P, batch.T
    ctx = Context(batch=batch, backend=be, peft=plan.peft, rank=plan.rank, dtype=plan.dtype, rngs=rngs,
                  max_iter=plan.max_iter, tol=plan.tol, callback=plan.callback, options=plan.options)
    setup = time.perf_counter() - started
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by the monitor, once
        out = _SOLVER_MODULES[plan.solver or plan.method].solve(ctx)
    params = out.params
    canonical = getattr(plan.peft, "canonicalize", None)
    if params and callable(canonical):
        params = canonical(params)
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
        info = {**out.info, "setup_seconds": setup / P, "batch": plan.kind, "T": T, "d_out": plan.d_out,
                "d_in": plan.d_in, "message": out.messages[p], "batch_size": P}
        if plan.method == "lora-ml":
            info.update(solver=plan.solver, requested_solver=plan.requested)
        else:  # no solver choice: the method's own procedure
            info.update(solver=METHOD_PROCEDURES[plan.method])
        history = out.histories[p]
        results.append(RetrainResult(
            A=A[p], params={k: v[p * T:(p + 1) * T] for k, v in params.items()},
            objective=history[-1] if history else float("nan"), history=np.asarray(history), n_iter=out.n_iter[p],
            converged=out.converged[p], seconds=seconds, method=plan.method, solver=plan.solver, peft=plan.peft,
            rank=plan.rank, backend=be.name, dtype=np.dtype(plan.dtype).name, message=out.messages[p], info=info,
            shared=shared if P == 1 else {k: v[p] for k, v in shared.items()}))
    return results


def _solve_on_engine(plan: _Plan, problems: list, rngs: list, reductions) -> list:
    """Solve ``problems`` (lists of tasks) on the engine (fastlora.solvers.engine); RetrainResults or errors."""
    from . import engine as E
    base_sq = None if reductions is None else [r.base_sq for r in reductions]
    solved, info, seconds = engine_path.solve(plan.method, plan.solver, plan.peft, plan.rank, problems, rngs,
                                              plan.options, plan.max_iter, plan.tol, plan.dtype, plan.backend,
                                              base_sq, plan.threads)
    P, T, d_out, d_in = len(problems), len(problems[0]), problems[0][0].d_out, problems[0][0].d_in
    params = {}
    if plan.method == "lora-ml":
        params = E.params_of(E.peft_code(plan.peft), solved.theta, T, plan.rank, d_out, d_in)
        canonical = getattr(plan.peft, "canonicalize", None)
        if callable(canonical):
            params = canonical(params)
    info.update(batch=plan.kind, T=T, d_out=d_out, d_in=d_in, batch_size=P, compile_seconds=solved.compile_seconds)
    if plan.method == "lora-ml":
        info.update(solver=plan.solver, requested_solver=plan.requested)
    else:
        info.update(solver=METHOD_PROCEDURES[plan.method])
    results = []
    for p in range(P):
        message, converged, error = solved.outcome(p, plan.max_iter)
        if error is not None:
            results.append(error)
            continue
        history = np.array(solved.histories[p], dtype=np.float64)
        objective = float(solved.objective[p])
        history = np.append(history[:-1], objective)  # the last entry: F at the returned point
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
