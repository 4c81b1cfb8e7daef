"""Fine-tuning a retrained A on a new task: θ̂ = argmin_θ L_new(A + Δ_p(θ)) at rank r."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import peft as peft_registry
from .backends import get_backend, resolve_dtype
from .errors import FastLoRAError, check_array, check_list, per_entry
from .linop import LowRankUpdate
from .options import OPTIONS, check_solver_options
from .peft.protocol import check_shape_supported, shared_names
from .peft.registry import finetuning_parameterization
from .reduction import extend_basis, orthonormal_basis
from .seeding import as_generator, separate_streams
from .solvers import engine as engine_path
from .solvers.adapters import InnerGradient, choose_adapter_step
from .solvers.common import Context, RetrainResult
from .taskbatch import stack_problems
from .tasks import LowRankTarget, Task, excess_risks, sample_many

# the linear model's fine-tuning defaults, from the options schema
FINETUNE_MAX_ITER = OPTIONS["max_iter"].default_for("finetune", "linear")
FINETUNE_TOL = OPTIONS["tol"].default_for("finetune", "linear")
FINETUNE_PEFT = OPTIONS["ft_peft"].default


@dataclass
class FinetuneResult:
    """``params`` (batched over one task), ``delta`` (d_out, d_in), ``loss`` = L(A + Δ) on the
    fine-tuning data (or population), ``excess_risk`` = ½‖A + Δ − W*‖²_F (NaN without ground
    truth), ``exact`` (closed-form fit) and ``n_iter``."""

    params: dict
    delta: np.ndarray
    loss: float
    excess_risk: float
    exact: bool
    n_iter: int
    converged: bool

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.params.items())
        return (f"FinetuneResult(params={{{shapes}}}, delta{tuple(self.delta.shape)}, loss={self.loss:.6g}, "
                f"excess_risk={self.excess_risk:.6g}, exact={self.exact}, n_iter={self.n_iter}, "
                f"converged={self.converged})")


def finetune(A, task: Task, peft=FINETUNE_PEFT, rank: int | None = None, n: int | None = None, seed=0, *,
             backend: str = "auto", dtype="float64", max_iter: int = FINETUNE_MAX_ITER, tol: float = FINETUNE_TOL,
             peft_options: dict | None = None) -> FinetuneResult:
    """Fit a rank-``rank`` adapter of ``peft`` on ``task`` starting from ``A``.

    ``rank`` defaults to the task's ground-truth rank k (as ``evaluate``'s ``ft_rank`` to the
    problem's k); a task without a known k needs it given.  ``n`` may also be ``"population"``
    (= None); ``backend`` as in :func:`fastlora.retrain`.

    ``A``: the retrained matrix (an array or a :class:`~fastlora.linop.LowRankUpdate`), or the
    :class:`~fastlora.RetrainResult` itself — needed for parameterizations with shared
    parameters (protocol v2), whose retrained shared values are kept while the task's own
    parameters are fitted (``rank`` then defaults to the retrained rank).  With a retrain result,
    ``peft`` named like its parameterization is the retrained instance, options and all;
    ``peft_options`` that differ from those are refused where shared parameters are kept.
    ``n=None`` fits on the task as given (its population target, or its data); an integer ``n``
    first draws ``n`` fresh samples from the task's law (reproducible by ``seed``).  The fit is
    exact where the parameterization allows it (truncated SVD / top-r eigen / reduced-rank
    regression); otherwise gradient steps run until the loss stops changing by more than ``tol``
    (relative) or ``max_iter`` steps.  A task of the shallow network (``model="shallow"``) is
    fine-tuned by :func:`fastlora.shallow.finetune_shallow`
    (``A``: its retrain result, whose A and c stay frozen).
    """
    return finetune_many([A], [task], peft=peft, rank=rank, n=n, seeds=[seed], backend=backend, dtype=dtype,
                         max_iter=max_iter, tol=tol, peft_options=peft_options)[0]


def ground_truth_rank(task) -> int | None:
    """The rank k of a task's ground-truth perturbation where known (a factored target's, or ``task.k``)."""
    known = getattr(task, "k", None)
    if known is not None:
        return int(known)
    target = getattr(task, "target", None)
    return int(target.B.shape[1]) if isinstance(target, LowRankTarget) else None


def finetune_many(starts: list, tasks: list, peft=FINETUNE_PEFT, rank: int | None = None, n: int | None = None,
                  seeds=0, *, backend: str = "auto", dtype="float64", max_iter: int = FINETUNE_MAX_ITER,
                  tol: float = FINETUNE_TOL, peft_options: dict | None = None) -> list[FinetuneResult]:
    """:func:`finetune` of ``starts[i]`` on ``tasks[i]`` (seed ``seeds[i]``) for every i, with the
    exact fits of all of them in one batched call (each is what a lone finetune gives)."""
    tasks = check_list("tasks", tasks, "task")
    if not isinstance(starts, np.ndarray):  # a stacked (P, d_out, d_in) array of starts is one per task too
        starts = check_list("starts", starts, "task")
    elif starts.ndim != 3:
        raise FastLoRAError(f"starts must be a list of matrices A, one per task, or their stack (P, d_out, d_in); "
                            f"got an array of shape {starts.shape}" + (" (one task: starts=[A])" if starts.ndim == 2
                                                                        else ""))
    if len(starts) != len(tasks):
        raise FastLoRAError(f"finetune_many: {len(starts)} starts for {len(tasks)} tasks")
    # checked here, not where drawn: an exact fit draws nothing
    seeds = OPTIONS["seed"].check_each("seeds", per_entry("seeds", seeds, len(tasks), "task"))
    for i, task in enumerate(tasks):
        if not isinstance(task, Task):
            raise FastLoRAError(f"{'task' if len(tasks) == 1 else f'tasks[{i}]'} must be a fastlora.Task, got "
                                f"{type(task).__name__}")
    peft_options = OPTIONS["peft_options"].check(peft_options)
    resolved = _finetuning_parameterizations(starts, tasks, peft, peft_options, rank)
    if rank is None and all(isinstance(A, RetrainResult) and A.shared and shared_names(p)
                            for A, p in zip(starts, resolved)) and len({A.rank for A in starts}) == 1:
        rank = starts[0].rank  # the shared parameters' rank: fine-tuning keeps them
    if rank is None:
        known = {ground_truth_rank(task) for task in tasks}
        if None in known or len(known) != 1:
            raise FastLoRAError("rank is required: it defaults to the tasks' ground-truth rank k, which "
                                + ("these tasks do not share" if None not in known else "a task here has none"))
        rank = known.pop()
    rank = OPTIONS["rank"].check(rank)
    max_iter = OPTIONS["max_iter"].resolve(max_iter, "finetune", "linear")
    tol = OPTIONS["tol"].resolve(tol, "finetune", "linear")
    n = OPTIONS["n"].check(n)
    be, dtype = get_backend(backend), resolve_dtype(dtype)
    out: list[FinetuneResult | None] = [None] * len(tasks)
    for task in tasks:
        if rank > min(task.d_out, task.d_in):
            raise FastLoRAError(f"rank={rank} is too large; it must be <= min(d_out, d_in) = "
                                f"{min(task.d_out, task.d_in)}")
        if n is not None and task.target is None:
            raise FastLoRAError(f"n={n}: fine-tuning samples can only be drawn from a task with ground truth "
                                f"(W_star); fine-tune on this task's own data with n=None")
    # each task's samples from its own seed, drawn together — unless one Generator serves several tasks:
    # then each task samples and draws its start in turn, as lone finetune calls would
    separate = separate_streams(seed for seed in seeds if isinstance(seed, np.random.Generator))
    drawn = sample_many(tasks, n, seeds) if n is not None and separate else None
    dense_jobs = []
    checked: dict = {}  # (id(A), shape) -> (A, A checked); A kept so that its id is not reused meanwhile
    for i, (A, task, seed) in enumerate(zip(starts, tasks, seeds)):
        parameterization = resolved[i]
        retrained = A if isinstance(A, RetrainResult) else None
        if retrained is not None:
            A = retrained.A
        if n is not None:
            task = drawn[i] if drawn is not None else task.sample(n, seed=seed)
        check_shape_supported(parameterization, task.d_out, task.d_in)
        given = _shared_start(parameterization, retrained, task, rank, seed)
        if isinstance(A, LowRankUpdate):
            if A.shape != (task.d_out, task.d_in):
                raise FastLoRAError(f"A has shape {A.shape}; expected ({task.d_out}, {task.d_in})")
            out[i] = _finetune_lowrank(A, task, parameterization, rank)
            if out[i] is not None:
                continue
            A = A.dense()
        key = (id(A), task.d_out, task.d_in)  # one result's A serves all its test tasks: checked once
        if key not in checked:
            checked[key] = (A, check_array("A", A, shape=(task.d_out, task.d_in)))
        dense_jobs.append((i, checked[key][1], task, seed, given))
    groups: dict = {}
    for job in dense_jobs:  # jobs that can share one batch: same shape, mode and parameterization, no per-job start
        key = (job[2].d_out, job[2].d_in, job[2].is_population, job[4] is None, id(resolved[job[0]]))
        groups.setdefault(key if job[4] is None else ("alone", job[0]), []).append(job)
    for jobs in groups.values():
        fitted = _fit(jobs, resolved[jobs[0][0]], rank, be, dtype, max_iter, tol)
        for i, result in zip([j[0] for j in jobs], fitted):
            out[i] = result
    return out


def _finetuning_parameterizations(starts, tasks, peft, peft_options, rank) -> list:
    """Each start's parameterization: ``peft`` resolved against the retrained instance of a retrain
    result (fastlora.peft.registry.finetuning_parameterization), built once where no result is given."""
    plain = None
    out = []
    for A, task in zip(starts, tasks):
        retrained = getattr(A, "peft", None) if isinstance(A, RetrainResult) else None
        if retrained is None:
            plain = plain or peft_registry.get(peft, **(peft_options or {}))
            out.append(plain)
            continue
        sizes = (getattr(task, "d_out", 1), getattr(task, "d_in", 1), rank or A.rank or 1)
        out.append(finetuning_parameterization(peft, peft_options, retrained, "peft", sizes))
    return out


def _fit(jobs, peft, rank, be, dtype, max_iter, tol) -> list[FinetuneResult]:
    """Fine-tune every (index, A, task, seed, start) job of one shape in one batch (P = len(jobs), T = 1)."""
    tasks = [j[2] for j in jobs]
    given = jobs[0][4]
    if given is None and engine_path.covers_fit(peft, tasks[0], be.name):
        return _fit_on_engine(jobs, peft, rank, be, dtype, max_iter, tol)
    batch = stack_problems([[t] for t in tasks], be, dtype, "dense" if tasks[0].is_population else "finite")
    options = check_solver_options("lora-ml", "als", {} if given is None else {"init_params": given})
    ctx = Context(batch=batch, backend=be, peft=peft, rank=rank, dtype=dtype,
                  rngs=[as_generator(j[3]) for j in jobs], max_iter=max_iter, tol=tol, callback=None, options=options)
    step = choose_adapter_step(ctx, fixed_A=True)
    if isinstance(step, InnerGradient) and len(jobs) > 1:  # inexact fits stop per task: one at a time
        return [r for job in jobs for r in _fit([job], peft, rank, be, dtype, max_iter, tol)]
    point = batch.residual(be.asarray(np.stack([j[1] for j in jobs]), dtype))
    if isinstance(step, InnerGradient):
        params, n_iter, converged = _iterate(step, point, batch, max_iter, tol)
    else:
        params, n_iter, converged = step.fit(point, None), 1, True
    deltas = np.asarray(be.to_numpy(step.delta_fn(params)), dtype=np.float64)
    own = [k for k in params if k not in shared_names(peft)]
    fitted = np.array([j[1] for j in jobs]) + deltas
    risks = excess_risks(tasks, fitted)
    results = []
    for p, task in enumerate(tasks):
        loss = max(float(task.loss(fitted[p])), 0.0)  # a loss is >= 0; rounding of s − ⟨W, C⟩ + ½⟨WΣ, W⟩ can dip below
        mine = {k: np.asarray(be.to_numpy(params[k][p:p + 1])) for k in own}
        results.append(FinetuneResult(mine, deltas[p], loss, float(risks[p]), step.exact, n_iter, converged))
    return results


def _fit_on_engine(jobs, peft, rank, be, dtype, max_iter, tol) -> list[FinetuneResult]:
    """:func:`_fit` on the engine (fastlora.solvers.engine): the exact fit, or L-BFGS over the adapter
    with A fixed where none exists (``lora_sym`` on samples), every job one problem of one batch."""
    from . import engine as E
    tasks = [j[2] for j in jobs]
    starts = np.array([j[1] for j in jobs])  # one shape (np.stack's checks cost 4× as much)
    solved, exact = engine_path.fit(peft, rank, tasks, starts, [j[3] for j in jobs], max_iter, tol, dtype, be)
    params = E.params_of(E.peft_code(peft), solved.theta, 1, rank, tasks[0].d_out, tasks[0].d_in)
    canonical = getattr(peft, "canonicalize", None)
    if callable(canonical):
        params = canonical(params)
    deltas = np.asarray(peft.delta(params), dtype=np.float64)
    risks = excess_risks(tasks, starts + deltas)
    converged = E.status.converged_each(solved.status).tolist()  # a fit that failed is not converged
    results = []
    for p in range(len(jobs)):
        mine = {k: np.ascontiguousarray(v[p:p + 1]) for k, v in params.items()}
        results.append(FinetuneResult(mine, deltas[p], float(solved.objective[p]), float(risks[p]), exact,
                                      int(solved.n_iter[p]), converged[p]))
    return results


def lowrank_residual(A: LowRankUpdate, task: Task, one_basis: bool = False):
    """(Q_out, Q_in, K) with W* − A = Q_out K Q_inᵀ, for a population task whose factored target
    shares A's base (then W* − A = [B*, −L][C*, R]ᵀ has rank ≤ k + m); None otherwise.
    ``one_basis``: the same basis on both sides (what a symmetric fit needs)."""
    target = task.target
    if not (task.is_population and isinstance(target, LowRankTarget) and A.base is not None
            and (target.base is A.base or np.array_equal(target.base, A.base))):
        return None
    if A.basis is not None and (A.basis is A.right or not one_basis):
        # A = S + Q_out E Q_inᵀ from the reduced solver: extend its orthonormal bases by the task's
        # own k directions only, and write W* − A = (Q₁ᵀB*)(Q₂ᵀC*)ᵀ − [E 0; 0 0] in them
        if one_basis:
            Q_out = Q_in = extend_basis(A.basis, np.concatenate([target.B, target.C], axis=1))
        else:
            Q_out, Q_in = extend_basis(A.basis, target.B), extend_basis(A.right, target.C)
        K = (Q_out.T @ target.B) @ (Q_in.T @ target.C).T
        m_out, m_in = A.core.shape
        K[:m_out, :m_in] -= A.core
        return Q_out, Q_in, K
    left = np.concatenate([target.B, -A.left], axis=1)
    right = np.concatenate([target.C, A.right], axis=1)
    if one_basis:
        Q_out = Q_in = orthonormal_basis(np.concatenate([left, right], axis=1))
    else:
        Q_out, Q_in = orthonormal_basis(left), orthonormal_basis(right)
    return Q_out, Q_in, (Q_out.T @ left) @ (Q_in.T @ right).T


def _shared_start(peft, retrained, task: Task, rank: int, seed) -> dict | None:
    """For a parameterization with shared parameters (protocol v2): the new task's starting
    parameters — its own from ``peft.init`` and the shared ones of the retrain result, which
    fine-tuning keeps (only the per-task parameters are trained)."""
    names = shared_names(peft)
    if not names:
        return None
    if retrained is not None and getattr(retrained.peft, "name", None) != peft.name:
        raise FastLoRAError(f"peft={peft.name!r} fine-tunes with the shared parameters {list(names)} of a retrain "
                            f"result with that peft, but this result was retrained with peft="
                            f"{getattr(retrained.peft, 'name', None)!r}; retrain with peft={peft.name!r} first")
    if retrained is None or not set(names) <= set(retrained.shared):
        raise FastLoRAError(f"peft={peft.name!r} has shared parameters {list(names)} learned in retraining: pass the "
                            f"retrain result (fl.finetune(res, task, peft={peft.name!r}, ...)) instead of A")
    if retrained.rank is not None and rank != retrained.rank:
        raise FastLoRAError(f"rank={rank} differs from the retrained shared parameters' rank {retrained.rank}")
    start = peft.init(as_generator(seed), task.d_out, task.d_in, rank, 1)
    start.update({k: np.asarray(retrained.shared[k]) for k in names})
    return start


def _finetune_lowrank(A: LowRankUpdate, task: Task, peft, rank: int) -> FinetuneResult | None:
    """Population fine-tuning on a structured A = S + L Rᵀ whose base is the task's own shared
    part: W* − A = [B*, −L][C*, R]ᵀ has rank ≤ k + m, so the exact best fit is the one of a
    small matrix in orthonormal bases of its column and row spaces (psd: one basis for both),
    lifted back — no d_out × d_in array.  None where that does not apply (the caller densifies)."""
    family = getattr(peft, "family", None)
    lowrank = lowrank_residual(A, task, one_basis=family == "psd") if family in ("general", "psd") else None
    if lowrank is None:
        return None
    Q_out, Q_in, K = lowrank
    small = peft.best_fit(K[None], rank)
    B, C = peft.factors(small)
    B_full = Q_out @ B
    params = peft.from_factors(B_full, B_full if C is B else Q_in @ C)
    risk = 0.5 * float(np.sum((K - np.asarray(peft.delta(small))[0]) ** 2))
    full_B, full_C = peft.factors(params)
    delta = LowRankUpdate(None, full_B[0], full_C[0])
    return FinetuneResult({k: np.asarray(v) for k, v in params.items()}, delta, risk, risk, True, 1, True)


def _iterate(step, point, batch, max_iter, tol):
    params, previous = None, None
    chunk = 10
    for done in range(chunk, max_iter + chunk, chunk):
        step.steps = min(chunk, max_iter - done + chunk)
        params = step.fit(point, params)
        value = float(batch.objective(point.A, step.adapters(params))[0])
        if previous is not None and abs(previous - value) <= tol * max(abs(previous), 1e-300):
            return params, done, True
        previous = value
    return params, max_iter, False
