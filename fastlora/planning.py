"""Planning a linear retraining: the caller's arguments (:class:`SolveRequest`) checked against a
problem into a :class:`Plan` — method, solver (``auto`` resolved), parameterization, batch kind,
reduction, memory, and whether the compiled engine runs it."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import options as schema
from . import peft as peft_registry
from .backends import get_backend, resolve_dtype
from .config import require_memory
from .errors import FastLoRAError
from .implicit import is_implicit
from .peft.protocol import check_shape_supported
from .reduction import Reduction, plan_reduction, plan_reductions
from .seeding import as_generator
from .sizing import check_memory
from .solvers import engine as engine_path
from .solvers.adapters import check_als_supported
from .solvers.auto import choose_solver
from .taskbatch import as_task_list, batch_kind
from .tasks import LowRankTarget


@dataclass(frozen=True)
class SolveRequest:
    """The arguments of one retraining as the caller gave them (:func:`fastlora.retrain`'s), before
    any check: :func:`plan_solve` validates them against a problem."""

    method: str = "lora-ml"
    peft: object = "lora_sym"
    rank: int | None = None
    solver: str = "auto"
    backend: str = "auto"
    max_iter: int | None = None
    tol: float | None = None
    seed: object = 0
    dtype: object = "float64"
    threads: int | None = None
    callback: object = None
    peft_options: dict | None = None
    options: dict = field(default_factory=dict)  # the solver options (fastlora.options, group "solver")
    dense_A: bool = True

    def arguments(self) -> dict:
        """The keyword arguments of ``fastlora.retrain`` / ``retrain_many`` that this request holds
        (seed and callback aside), solver options included."""
        return dict(method=self.method, peft=self.peft, rank=self.rank, solver=self.solver, backend=self.backend,
                    max_iter=self.max_iter, tol=self.tol, dtype=self.dtype, threads=self.threads,
                    dense_A=self.dense_A, peft_options=self.peft_options, **self.options)


@dataclass
class Plan:
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

    def reduce_many(self, problems: list) -> list:
        """Each problem's Reduction (or None) under this plan's parameterization and options (none where the
        options say ``reduction="none"``)."""
        if not self.tasks[0].is_population:  # only population problems reduce (retrain_many: all alike)
            return [None] * len(problems)
        return plan_reductions([(p, as_task_list(p)) for p in problems], self.peft, self.options)


UNPLANNED = object()  # plan_solve's reduction argument: not decided yet


def plan_solve(problem_or_tasks, request: SolveRequest, reduction=UNPLANNED) -> Plan:
    """The validated solve of ``request`` on ``problem_or_tasks``; ``reduction``: the problem's
    Reduction (or None) where already planned."""
    method, peft, rank, solver, options = request.method, request.peft, request.rank, request.solver, request.options
    peft_options, callback, dense_A, dtype = request.peft_options, request.callback, request.dense_A, request.dtype
    method = schema.OPTIONS["method"].check(method)
    solver = schema.OPTIONS["solver"].check(solver)
    tasks = as_task_list(problem_or_tasks)
    d_out, d_in = tasks[0].d_out, tasks[0].d_in
    if method != "lora-ml":
        _check_adapter_arguments(method, peft, rank, peft_options, d_out, d_in)
    max_iter = schema.OPTIONS["max_iter"].resolve(request.max_iter, "retrain", "linear")
    tol = schema.OPTIONS["tol"].resolve(request.tol, "retrain", "linear")
    threads = schema.OPTIONS["threads"].check(request.threads)
    dtype = resolve_dtype(dtype)
    rng = as_generator(schema.OPTIONS["seed"].check(request.seed))
    if callback is not None and not callable(callback):
        raise FastLoRAError("callback must be callable as callback(iteration, elapsed, objective)")
    dense_A = schema.OPTIONS["dense_A"].check(dense_A)
    factored = "always" if options.get("adapter_step") == "subspace" else "auto"
    be = get_backend(request.backend)
    planned, reduction = reduction is not UNPLANNED, None if reduction is UNPLANNED else reduction
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
    check_memory(be, tasks, kind, rank, dtype)
    on_engine = engine_path.covers(method, solver, parameterization, kind, be.name, tasks[0].d_out, tasks[0].d_in,
                                   callback, options)
    return Plan(tasks, kind, factored, method, solver, requested, parameterization, rank, be, dtype, threads,
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
