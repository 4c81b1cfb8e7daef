"""Retraining and fine-tuning of the shallow network (docs/design.md §6).

Methods (one shared hidden layer A (h×d) and output weights c (h,), h = d in the paper):

* ``standard``: min over (A, c) of Σ_t L_t(A, c) — one network for all tasks.
* ``lora-ml``:  min over (A, c, θ_1..θ_T) of Σ_t L_t(A + Δ(θ_t), c) with any registered
  parameterization Δ (the paper: asymmetric LoRA, d→k→d, second factor initialised at 0).
* ``reptile``:  W_t, c_t ← (A, c); ``inner_steps`` gradient steps of size ``inner_lr`` on
  L_t over (W_t, c_t) (full fine-tuning of both layers); then
  (A, c) ← (A, c) + ``outer_lr``·mean_t((W_t, c_t) − (A, c)).  The authors' code has no
  shallow-network Reptile; this is the first-order Reptile of docs/design.md §2 applied to both layers.

with L_t(W, c) = (1/2n_t) Σ_i (c·sigmoid(W x_i) − y_i)² (the paper's code uses torch's
MSELoss, (1/n_t) Σ_i, i.e. 2·L_t; every optimizer here and the bench use L_t).

Fine-tuning a new task trains only its adapter, A and c frozen.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.random.bit_generator import ISeedSequence

from .. import peft as peft_registry
from ..backends import get_backend, numba_status, resolve_dtype
from ..config import settings
from ..engine import status
from ..errors import FastLoRAError, check_choice, check_int
from ..options import OPTIONS, rank_or_problem_k
from ..peft.protocol import shared_names
from ..seeding import PURPOSE_EVAL, as_generator, task_seed
from ..solvers.common import RetrainResult
from . import optim
from .model import ShallowData, ShallowObjective, trainable_names
from .optim import MODEL
from .problem import ShallowTask, as_shallow_tasks, predict
from .scores import labels_are_pm1, mean_squared_error, sign_accuracy

SOLVERS = ("auto", "gd")
DEFAULT_OPTIMIZER = {"auto": "lbfgs", "gd": "adamw"}
PEFT, FT_PEFT, TOL = (OPTIONS[name].default_for(model=MODEL) for name in ("peft", "ft_peft", "tol"))
# Why the schema's shallow defaults are what they are:
# * max_iter, Reptile: 500 outer steps (5,000 gradient evaluations).  Measured at the paper's point
#   (d = 10, T = 3, N = 1000, 6 seeds) its test loss after 500, 1000 and 2000 steps was 0.164,
#   0.141 and 0.151 on average (noisier than it moves), while 2000 steps cost 4x the time and
#   took 770 of a shallow sweep's 925 solve-seconds; its iterate still moves ~1e-3 per step there,
#   so its rows say "not converged" and why (_reptile).  AdamW 40,000 retraining and 15,000
#   fine-tuning steps are the paper's procedure.
# * restarts of a retraining, kept by lowest objective.  Measured at the paper's point (d = 10,
#   T = 3, N = 1000, σ = 0.1; 10 seeds x 8 starts each): LoRA-ML's single start ended above 1.5x the
#   best objective in 20% of starts overall and in 75% for two of the ten seeds (test loss ~0.15
#   instead of ~0.004); with 8 starts the chance of missing the best basin is ~10% for those seeds
#   and below 1% for the others.  Standard retraining's 80 starts all ended within 4% of their
#   seed's best (one start suffices); Reptile minimises no objective, so it keeps one start.  An
#   L-BFGS fine-tuning's 5 adapter starts: see finetune_shallow.


def resolve_backend(backend):
    """``auto``: FASTLORA_BACKEND if set, else numba where importable, else numpy.  The
    optimizers run on the host and these networks are small, so ``auto`` never picks cupy;
    ``backend="cupy"`` runs the reference kernel on the GPU when asked for."""
    name = settings.default_backend if backend in (None, "auto") else backend
    if name == "auto":
        name = "numba" if numba_status()[0] else "numpy"
    return check_choice("backend", name, ("numpy", "numba", "cupy"))


def _shallow_peft(peft, peft_options):
    """The parameterization of the shallow network's adapters: per-task parameters only (the
    shared trainable ones of protocol v2 are not carried by these solvers)."""
    parameterization = peft_registry.get(peft, **(OPTIONS["peft_options"].check(peft_options) or {}))
    shared = shared_names(parameterization)
    if shared:
        raise FastLoRAError(f"peft={parameterization.name!r} has shared parameters ({', '.join(shared)}); the shallow "
                            f"network trains per-task adapters only: use e.g. 'lora' or 'lora_sym'")
    return parameterization


def _optimizer_for(solver, optimizer) -> str:
    if solver == "als":
        raise FastLoRAError("solver='als' has no closed-form steps for the shallow network; choose 'auto' "
                            "(L-BFGS) or 'gd' (first-order, AdamW by default)")
    solver = check_choice("solver", solver, SOLVERS)
    chosen = DEFAULT_OPTIMIZER[solver] if optimizer is None else optimizer
    return check_choice("optimizer", chosen, optim.OPTIMIZERS)


def _ftol_for(ftol, optimizer: str, n_samples: int) -> float:
    """``ftol`` None: the statistical default (:func:`optim.statistical_ftol`) for L-BFGS and
    Reptile; 0 (off) for Adam/AdamW, which the paper runs for a fixed number of steps."""
    if ftol is None:
        return optim.statistical_ftol(n_samples) if optimizer in ("lbfgs", "reptile") else 0.0
    return OPTIONS["ftol"].check(ftol)


def paper_init(rng, h: int, d: int):
    """A (h, d) and c (h,) as torch's ``nn.Linear`` initialises them (the authors' code):
    uniform on ±1/√fan_in, fan_in = d for both layers."""
    bound = 1.0 / np.sqrt(d)
    return rng.uniform(-bound, bound, (h, d)), rng.uniform(-bound, bound, h)


def _minimize(objective, x, train, monitor, optimizer, max_iter, be, dtype, adam_options):
    if optimizer == "lbfgs":
        return optim.lbfgs(objective, x, train, monitor, max_iter=max_iter, backend=be, dtype=dtype)
    return optim.adam(objective, x, train, monitor, max_iter=max_iter, xp=be.xp,
                      decoupled=optimizer == "adamw", **adam_options)


def retrain_shallow(problem_or_tasks, method: str = "lora-ml", peft=PEFT, rank: int | None = None,
                    solver: str = "auto", optimizer: str | None = None, max_iter: int | None = None,
                    tol: float = TOL, seed=0, backend: str = "auto", *, lr: float | None = None,
                    weight_decay: float | None = None, betas=None, eps: float | None = None, callback=None,
                    init="paper", restarts: int | None = None, ftol: float | None = None, dtype="float64",
                    threads: int | None = None, peft_options: dict | None = None, inner_lr: float | None = None,
                    inner_steps: int | None = None, outer_lr: float | None = None) -> RetrainResult:
    """Retrain the shallow network's shared (A, c) on T tasks.

    Parameters
    ----------
    problem_or_tasks : ShallowProblem, ShallowTask or list of ShallowTask
    method : "standard" | "lora-ml" | "reptile" (see the module docstring).
    peft, rank, peft_options : the adapters of LoRA-ML (any registered parameterization;
        default asymmetric ``lora`` as the paper; ``rank`` defaults to the problem's k).
    solver : "auto" (L-BFGS-B) or "gd" (first-order; AdamW by default, the paper's procedure).
    optimizer : "lbfgs" | "adamw" | "adam" — overrides the solver's default optimizer.
    max_iter : iterations (default: lbfgs 5000, adamw/adam 40000 as the paper, reptile 500).
    tol : converged when ‖∇F‖ ≤ tol·‖∇F(start)‖ (reptile: relative change of (A, c) ≤ tol).
    ftol : converged when F decreased by ≤ ftol·F over the last 100 iterations; None: 1% of
        F's sampling resolution √(2/N) for L-BFGS and Reptile (N = all samples), off for Adam/AdamW.
        (L-BFGS also stops, converged, once F's rounding error hides any further decrease.)
    lr, weight_decay, betas, eps : Adam / AdamW settings (torch's defaults; AdamW's weight
        decay 0.01 as torch's default, which the paper used).
    init : "paper" (A, c as torch's nn.Linear, adapters from ``peft.init``) or a dict
        {"A": (h, d), "c": (h,)} (adapters from ``peft.init``).
    restarts : number of independent "paper" starts, each run to its stopping rule; the one with
        the lowest objective is kept (None: 8 for lora-ml, 1 for standard and reptile —
        measured at the paper's point, see the module's notes).  ``info["restart_objectives"]`` lists
        every start's final objective, ``info["restarts_reached"]`` counts those within F's
        sampling resolution √(2/N)·F of the best (how reliably the best basin is found).
    inner_lr, inner_steps, outer_lr : Reptile's step sizes (0.1, 10, 0.5).
    callback : ``callback(iteration, elapsed_seconds, objective)`` after each iteration (with
        restarts: every start's iterations, numbered within its own run).

    Returns a :class:`~fastlora.RetrainResult`: ``A`` (h, d), ``params`` (adapters, batched
    over tasks), ``shared={"c": c}``, ``info["optimizer"]`` / ``info["solver"]`` (what ran);
    ``n_iter`` counts the kept run's iterations, ``info["total_iterations"]`` all starts'.
    """
    started = time.perf_counter()
    method = OPTIONS["method"].check(method)
    tasks = as_shallow_tasks(problem_or_tasks)
    T, d = len(tasks), tasks[0].d
    h = d
    tol = OPTIONS["tol"].resolve(tol, model=MODEL)
    restarts = OPTIONS["restarts"].resolve(restarts, method, MODEL)
    dtype = resolve_dtype(dtype)
    rng = as_generator(seed)
    if callback is not None and not callable(callback):
        raise FastLoRAError("callback must be callable as callback(iteration, elapsed, objective)")
    if method == "reptile":
        if optimizer is not None:
            raise FastLoRAError(f"optimizer={optimizer!r} does not apply to method='reptile' (its steps are "
                                "inner_lr, inner_steps, outer_lr)")
        optimizer_name = "reptile"
    else:
        optimizer_name = _optimizer_for(solver, optimizer)
        for name, value in (("inner_lr", inner_lr), ("inner_steps", inner_steps), ("outer_lr", outer_lr)):
            if value is not None:
                raise FastLoRAError(f"{name} applies to method='reptile' only")
    max_iter = OPTIONS["max_iter"].resolve(max_iter, optimizer_name, MODEL)
    ftol = _ftol_for(ftol, optimizer_name, sum(task.n for task in tasks))
    adam_options = {"lr": lr, "weight_decay": weight_decay, "betas": betas, "eps": eps}
    if optimizer_name not in ("adamw", "adam") and any(v is not None for v in adam_options.values()):
        given = ", ".join(k for k, v in adam_options.items() if v is not None)
        verb = "applies" if given.count(",") == 0 else "apply"
        raise FastLoRAError(f"{given} {verb} to optimizer='adamw' or 'adam' only (this solve uses {optimizer_name!r})")
    adam_options = {k: v for k, v in adam_options.items() if v is not None}
    if isinstance(init, dict):
        if restarts > 1:
            raise FastLoRAError("restarts > 1 draws its starts from init='paper'; it cannot be combined with a "
                                "given init (pass restarts=1)")
    else:
        check_choice("init", init, ("paper",))

    parameterization = None
    if method == "lora-ml":
        rank = check_int("rank", rank_or_problem_k(rank, problem_or_tasks), low=1, high=min(h, d))
        parameterization = _shallow_peft(peft, peft_options)
    be = get_backend(resolve_backend(backend))
    data = ShallowData(tasks, be, dtype)
    reference = data.null_objective()

    def start():
        A0, c0 = _initial_shared(init, rng, h, d)
        x = {"A": be.asarray(A0, dtype), "c": be.asarray(c0, dtype)}
        if parameterization is not None:
            raw = _peft_init(parameterization, rng, h, d, rank, T, A0)
            x.update({k: be.asarray(v, dtype) for k, v in raw.items()})
        return x

    def run(x0, budget, history=()):
        monitor = optim.StallMonitor(callback, tol, budget, reference, dtype, ftol=ftol, history=history,
                                     step=status.step_option(method, "gd", optimizer_name))
        if method == "reptile":
            inner = {"inner_lr": inner_lr, "inner_steps": inner_steps, "outer_lr": outer_lr}
            x, n_iter, info = _reptile(data, x0, monitor, budget, **{k: v for k, v in inner.items() if v is not None})
        else:
            objective = ShallowObjective(data, parameterization, trainable_names(parameterization, x0))
            x, n_iter, info = _minimize(objective, x0, objective.train, monitor, optimizer_name, budget, be, dtype,
                                        adam_options)
        return x, monitor, n_iter, info

    with be.running(threads):
        runs = [run(start(), max_iter) for _ in range(restarts)]
    objectives = [r[1].history[-1] for r in runs]
    best = int(np.argmin(objectives))  # the first of equal ones
    x, mon, n_iter, info = runs[best]
    total = sum(r[2] for r in runs)
    resolution = objectives[best] * np.sqrt(2.0 / max(sum(task.n for task in tasks), 1))
    reached = sum(1 for value in objectives if value - objectives[best] <= resolution)
    A, c = x.pop("A"), x.pop("c")
    params = x
    canonical = getattr(parameterization, "canonicalize", None)
    if params and callable(canonical):
        params = canonical(params)
    be.synchronize()
    to_np = be.to_numpy
    info.update(solver=optimizer_name, optimizer=optimizer_name, model="shallow", restarts=restarts,
                restart_objectives=[float(v) for v in objectives], restarts_reached=reached, kept_start=best,
                total_iterations=total, ftol=ftol, T=T, d=d, message=mon.message)
    return RetrainResult(A=np.ascontiguousarray(to_np(A)), params={k: np.ascontiguousarray(to_np(v))
                                                                    for k, v in params.items()},
                         objective=float(mon.history[-1]), history=np.asarray(mon.history), n_iter=n_iter,
                         converged=mon.converged, seconds=time.perf_counter() - started, method=method,
                         solver=None if method == "reptile" else optimizer_name, peft=parameterization,
                         rank=rank if method == "lora-ml" else None, backend=be.name, dtype=np.dtype(dtype).name,
                         message=mon.message, info=info, shared={"c": np.ascontiguousarray(to_np(c))})


def _peft_init(parameterization, rng, h, d, rank, T, A0):
    if getattr(parameterization, "uses_base", False):
        return parameterization.init(rng, h, d, rank, T, np.asarray(A0))
    return parameterization.init(rng, h, d, rank, T)


def _initial_shared(init, rng, h, d):
    """(A0, c0) as numpy arrays: a fresh "paper" draw, or the given dict's arrays."""
    if not isinstance(init, dict):
        return paper_init(rng, h, d)
    if set(init) != {"A", "c"}:
        raise FastLoRAError(f"init as a dict needs exactly the keys 'A' and 'c', got {sorted(init)}")
    A0 = np.asarray(init["A"], dtype=np.float64)
    c0 = np.asarray(init["c"], dtype=np.float64)
    if A0.shape != (h, d) or c0.shape != (h,) or not (np.isfinite(A0).all() and np.isfinite(c0).all()):
        raise FastLoRAError(f"init['A'] must be a finite ({h}, {d}) array and init['c'] a finite ({h},) array; "
                            f"got shapes {A0.shape} and {c0.shape}")
    return A0, c0


def _reptile(data, x, monitor, max_iter, inner_lr=None, inner_steps=None, outer_lr=None):
    inner_lr = OPTIONS["inner_lr"].resolve(inner_lr, "reptile", MODEL)
    inner_steps = OPTIONS["inner_steps"].resolve(inner_steps, "reptile", MODEL)
    outer_lr = OPTIONS["outer_lr"].resolve(outer_lr, "reptile", MODEL)
    xp, T = data.xp, data.T
    A, c = x["A"], x["c"]

    def at_shared(A, c):
        """Every task at the shared (A, c), with its losses and gradients there."""
        W = xp.ascontiguousarray(xp.broadcast_to(A, (T, *A.shape)))
        C = xp.ascontiguousarray(xp.broadcast_to(c, (T, *c.shape)))
        return W, C, data.loss_grad(W, C)

    # the evaluation that records an iteration's objective is the next one's first inner step
    W, C, evaluated = at_shared(A, c)
    iteration = 0
    for iteration in range(1, max_iter + 1):
        for step in range(inner_steps):
            _, G, gc = evaluated if step == 0 else data.loss_grad(W, C)
            W, C = W - inner_lr * G, C - inner_lr * gc
        A_new = A + outer_lr * xp.mean(W - A[None], axis=0)
        c_new = c + outer_lr * xp.mean(C - c[None], axis=0)
        moved = xp.concatenate([(A_new - A).ravel(), c_new - c])
        scale = float(xp.sqrt(xp.sum(A_new * A_new) + xp.sum(c_new * c_new))) or 1.0
        change = float(xp.sqrt(xp.sum(moved * moved))) / scale
        A, c = A_new, c_new
        W, C, evaluated = at_shared(A, c)
        if monitor.record(iteration, float(xp.sum(evaluated[0])), change):
            break
    if not monitor.converged:  # say how far from a fixed point the budget left it
        monitor.conclude(f"reached max_iter={max_iter} outer steps (Reptile's budget) before a fixed point: the "
                         f"last step still moved (A, c) by {change:.1e} (relative; converged at tol)", False)
    return {"A": A, "c": c}, iteration, {"inner_lr": inner_lr, "inner_steps": inner_steps, "outer_lr": outer_lr,
                                         "last_change": change}


# ---------------------------------------------------------------------------------------------
@dataclass
class ShallowFinetuneResult:
    """A new task's adapter fitted with A and c frozen.

    ``params`` (batched over one task), ``delta`` (h, d) = Δ(θ̂), ``loss`` = L(A + Δ, c) on the
    fine-tuning data, ``n_iter``, ``converged``, ``optimizer``, ``seconds``, and scores that
    depend on what the task knows (:func:`held_out_scores`):

    * a task with ground truth: ``train_fit`` = mean (ŷ − y_clean)² on the fine-tuning inputs
      (the paper's reported number), ``test_loss`` = mean (ŷ − y_clean)² on ``n_eval`` fresh inputs;
    * a task with a held-out split (``task.held_out`` = (X_test, y_test), fastlora.datasets):
      ``train_fit`` = mean (ŷ − y)² on the fine-tuning samples, ``test_loss`` = mean (ŷ − y_test)²
      on the held-out split, ``test_accuracy`` = fraction with sign(ŷ) = y_test when the held-out
      labels are ±1;
    * data alone: ``train_fit`` against its labels; ``test_loss`` NaN.

    A score that does not apply is NaN.
    """

    params: dict
    delta: np.ndarray
    loss: float
    test_loss: float
    train_fit: float
    n_iter: int
    converged: bool
    optimizer: str
    seconds: float
    exact: bool = False
    test_accuracy: float = float("nan")


def shared_of(res_or_A_and_c):
    """The shared (A, c) of a shallow retraining result, or of an (A, c) pair."""
    if isinstance(res_or_A_and_c, RetrainResult):
        if "c" not in res_or_A_and_c.shared:
            raise FastLoRAError("this RetrainResult has no output weights shared['c']: it is not a shallow-network "
                                "retraining (use fastlora.finetune for linear models)")
        return res_or_A_and_c.A, res_or_A_and_c.shared["c"]
    if isinstance(res_or_A_and_c, (tuple, list)) and len(res_or_A_and_c) == 2:
        return res_or_A_and_c
    raise FastLoRAError("res_or_A_and_c must be a shallow RetrainResult or a pair (A, c)")


def finetune_shallow(res_or_A_and_c, task: ShallowTask, peft=FT_PEFT, rank: int = 1, n: int | None = None, seed=0,
                     *, solver: str = "auto", optimizer: str | None = None, max_iter: int | None = None,
                     tol: float = TOL, backend: str = "auto", lr: float | None = None,
                     weight_decay: float | None = None, ftol: float | None = None, restarts: int | None = None,
                     n_eval: int = 10000, peft_options: dict | None = None, dtype="float64",
                     threads: int | None = None) -> ShallowFinetuneResult:
    """Fit a rank-``rank`` adapter of ``peft`` on ``task`` with A and c frozen.

    ``n=None`` fits on the task's own data; an integer ``n`` first draws ``n`` fresh samples
    from the task's law (reproducible by ``seed``).  The adapter starts at ``peft.init``
    (LoRA: Δ = 0) and is fitted by L-BFGS-B (``solver="auto"``) or AdamW (``solver="gd"``,
    15,000 steps by default, the paper's procedure); ``tol`` and ``ftol`` as in
    :func:`retrain_shallow`.  ``restarts``: independent adapter starts (each from ``peft.init``),
    the one with the lowest fine-tuning loss is kept — the rank-k fit of a sigmoid network has
    poor local minima that a single start often lands in; default 5 for L-BFGS (measured at
    the paper's point, 10 seeds × 4 test tasks: tasks with test loss > 0.05 fell from 32% to
    20%, the median task's test loss from 0.012 to 0.006), 1 for Adam/AdamW (the paper's
    procedure is one run).  With ground truth, ``test_loss`` is
    measured on ``n_eval`` fresh inputs against clean labels (drawn from ``seed``, independent
    of the fine-tuning draw).  A task with a held-out split (fastlora.datasets) draws its ``n``
    fine-tuning samples from its training split (``task.sample``) and is scored on the held-out
    split (see :class:`ShallowFinetuneResult`).
    """
    started = time.perf_counter()
    if not isinstance(task, ShallowTask):
        raise FastLoRAError(f"task must be a ShallowTask, got {type(task).__name__}")
    A, c = shared_of(res_or_A_and_c)
    A = np.asarray(A, dtype=np.float64)
    h, d = A.shape
    if d != task.d:
        raise FastLoRAError(f"A has shape {A.shape}; its second axis must equal the task's d={task.d}")
    c = np.asarray(c, dtype=np.float64)
    if c.shape != (h,):
        raise FastLoRAError(f"c has shape {c.shape}; expected ({h},)")
    rank = check_int("rank", rank, low=1, high=min(h, d))
    n_eval = check_int("n_eval", n_eval, low=1)
    tol = OPTIONS["tol"].resolve(tol, model=MODEL)
    optimizer_name = _optimizer_for(solver, optimizer)
    restarts = OPTIONS["restarts"].resolve(restarts, f"finetune:{optimizer_name}", MODEL)
    max_iter = OPTIONS["max_iter"].resolve(max_iter, f"finetune:{optimizer_name}", MODEL)
    adam_options = {k: v for k, v in (("lr", lr), ("weight_decay", weight_decay)) if v is not None}
    if optimizer_name == "lbfgs" and adam_options:
        verb = "applies" if len(adam_options) == 1 else "apply"
        raise FastLoRAError(f"{', '.join(adam_options)} {verb} to optimizer='adamw' or 'adam' only (this fine-tuning "
                            f"uses {optimizer_name!r})")
    if n is not None:
        task = task.sample(check_int("n", n, low=1), seed=seed)
    ftol = _ftol_for(ftol, optimizer_name, task.n)
    rng = as_generator(seed)
    parameterization = _shallow_peft(peft, peft_options)
    dtype = resolve_dtype(dtype)
    be = get_backend(resolve_backend(backend))
    data = ShallowData([task], be, dtype)
    fits = []
    with be.running(threads):
        for _ in range(restarts):
            fits.append(_finetune_once(data, be, dtype, parameterization, rng, A, c, rank, tol, ftol, max_iter,
                                       optimizer_name, adam_options))
    loss, x, n_iter, converged, objective = fits[min(range(restarts), key=lambda i: (fits[i][0], i))]
    W = np.asarray(be.to_numpy(objective.weights(x)[0]), dtype=np.float64)
    params = {k: np.asarray(be.to_numpy(v)) for k, v in x.items() if k not in ("A", "c")}
    train_fit = test_loss = float("nan")
    if task.has_ground_truth:
        train_fit = float(np.mean((predict(task.X, W, c) - task.clean_labels(task.X)) ** 2))
        if isinstance(seed, np.random.Generator):
            eval_seed = int(seed.integers(2**63))
        elif isinstance(seed, ISeedSequence):
            eval_seed = int(seed.generate_state(1, np.uint64)[0] >> np.uint64(1))
        else:
            eval_seed = seed
        fresh = task.sample(n_eval, seed=task_seed(eval_seed, task.key, PURPOSE_EVAL))
        test_loss = float(np.mean((predict(fresh.X, W, c) - fresh.y_clean) ** 2))
        test_accuracy = float("nan")
    else:
        train_fit, test_loss, test_accuracy = held_out_scores(task, W, c)
    return ShallowFinetuneResult(params=params, delta=W - A, loss=loss, test_loss=test_loss, train_fit=train_fit,
                                 n_iter=n_iter, converged=converged, optimizer=optimizer_name,
                                 seconds=time.perf_counter() - started, test_accuracy=test_accuracy)


def held_out_scores(task: ShallowTask, W, c) -> tuple[float, float, float]:
    """(train_fit, test_loss, test_accuracy) of the network (W, c) on a task without ground truth.

    ``train_fit`` = mean (ŷ − y)² on the task's own samples; ``test_loss`` = mean (ŷ − y_test)²
    and ``test_accuracy`` = mean [sign(ŷ) = y_test] on its held-out split ``task.held_out`` =
    (X_test (m, d), y_test (m,)).  NaN where it does not apply: no held-out split (both test
    scores), held-out labels not all ±1 (accuracy).
    """
    train_fit = mean_squared_error(predict(task.X, W, c), task.y)
    held_out = getattr(task, "held_out", None)
    if held_out is None:
        return train_fit, float("nan"), float("nan")
    X_test, y_test = held_out
    prediction = predict(X_test, W, c)
    accuracy = sign_accuracy(prediction, y_test, "y_test") if labels_are_pm1(y_test) else float("nan")
    return train_fit, mean_squared_error(prediction, y_test), accuracy


def _finetune_once(data, be, dtype, parameterization, rng, A, c, rank, tol, ftol, max_iter, optimizer_name,
                   adam_options):
    """One adapter start fitted with A and c frozen: (loss, x, n_iter, converged, objective)."""
    h, d = A.shape
    raw = _peft_init(parameterization, rng, h, d, rank, 1, A)
    x = {"A": be.asarray(A, dtype), "c": be.asarray(c, dtype), **{k: be.asarray(v, dtype) for k, v in raw.items()}}
    names = trainable_names(parameterization, raw, shared=())
    objective = ShallowObjective(data, parameterization, names)
    mon = optim.StallMonitor(None, tol, max_iter, data.null_objective(), dtype, ftol=ftol,
                             step=status.step_option("lora-ml", "gd", optimizer_name))
    x, n_iter, _ = _minimize(objective, x, names, mon, optimizer_name, max_iter, be, dtype, adam_options)
    return float(objective.value(x)), x, n_iter, mon.converged, objective


__all__ = ["ShallowFinetuneResult", "finetune_shallow", "held_out_scores", "retrain_shallow"]
