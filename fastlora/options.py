"""Every option of fastlora, declared once: name, type, range, default, meaning, where it applies.

``retrain`` validates its arguments here, sweep specs take their keys, types and defaults
from here, the CLI builds its options from here, and the docstrings are generated from
here (in the spirit of scikit-learn's parameter constraints).  Checks raise
:class:`~fastlora.errors.FastLoRAError` naming the option and what is allowed.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.random.bit_generator import ISeedSequence

from .config import BACKEND_CHOICES, DTYPE_NAMES
from .errors import FastLoRAError, check_choice, check_float, check_int

POPULATION = "population"

METHODS = ("standard", "lora-ml", "reptile")
SOLVERS = ("auto", "als", "gd")
OPTIMIZERS = ("gd", "adam", "lbfgs")
ADAPTER_STEPS = ("auto", "subspace", "exact", "whitened", "inner")
ACCELERATIONS = ("anderson", "none")
DTYPES = DTYPE_NAMES


# the most starts of one landscape census: beyond, one census takes hours
MAX_STARTS = 100_000
# old spellings of options, accepted for a release with a deprecation warning: old -> current
DEPRECATED_NAMES = {"census_starts": "n_starts"}

# the largest noise std accepted: its square (times any sample count) stays finite in float64
MAX_NOISE = 1e100

@dataclass(frozen=True)
class Option:
    """One option.  ``kind``: "int", "float", "choice", "bool", "count" (positive int or
    ``"population"`` = None), "peft" (a registered name), "init_A" ("standard" | "zeros" | array),
    "params" (dict of arrays), "seed" (int >= 0 or a numpy Generator), "table" (a dict of
    keyword arguments).  ``cli``: a flag of ``fastlora solve`` (its option lists are built from it).

    Also "spectrum" (an input covariance name, fastlora.laws) and "int_list" / "float_list" (a
    non-empty list of positive numbers, one per task; cycled over the tasks).

    ``applies``: for solver options, the (method, solver) pairs that read it (empty: always).
    "law" (a registered problem generator, fastlora.generators).
    ``default`` may be a dict keyed by the case that reads the option (a method, an optimizer, or
    ``"finetune"``); ``model_defaults`` ((model, default), ...) gives a model whose default differs
    (e.g. the shallow network's ``tol``), in the same form.  ``sweep``: usable as a sweep-spec key.
    """

    name: str
    kind: str
    default: Any
    doc: str
    group: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple = ()
    allow_none: bool = False
    applies: tuple = ()
    sweep: bool = True
    cli: bool = True
    model_defaults: tuple = ()

    def default_for(self, case: str | None = None, model: str | None = None):
        """The default where ``case`` (a method, an optimizer, ``"finetune"``, ...) of ``model`` reads
        this option: the model's own where ``model_defaults`` declares one, else ``default``."""
        default = dict(self.model_defaults).get(model, self.default)
        return default.get(case) if isinstance(default, dict) else default

    def check_as(self, name: str, value):
        """:meth:`check` for an argument that spells this option ``name`` (e.g. the census's ``init``)."""
        return replace(self, name=name).check(value)

    def resolve(self, value, case: str | None = None, model: str | None = None):
        """``value`` checked, or where it is None the default of (``case``, ``model``), checked."""
        return self.check(self.default_for(case, model) if value is None else value)

    def check_each(self, name: str, values: list) -> list:
        """:meth:`check` of every entry of ``values`` (one per problem or task); an error names
        ``name[i]`` where there are several (one value's error is its own)."""
        checked = []
        for i, value in enumerate(values):
            try:
                checked.append(self.check(value))
            except FastLoRAError as exc:
                if len(values) == 1:
                    raise
                raise FastLoRAError(f"{name}[{i}]: {exc}") from None
        return checked

    def check(self, value):
        """``value`` validated and normalised (None stays None where allowed)."""
        name = self.name
        if value is None and (self.allow_none or self.kind == "count"):
            return None
        if self.kind == "int":
            return check_int(name, value, low=self.low, high=self.high)
        if self.kind == "float":
            return check_float(name, value, low=self.low, high=self.high, low_open=self.low_open)
        if self.kind == "choice":
            return check_choice(name, value, self.choices)
        if self.kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise FastLoRAError(f"{name} must be True or False, got {value!r}")
            return bool(value)
        if self.kind == "count":
            if isinstance(value, str) and value.strip().lower() == POPULATION:
                return None
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
                raise FastLoRAError(f"{name}={value!r} must be a positive integer or {POPULATION!r}")
            return int(value)
        if self.kind == "seed":
            if isinstance(value, (np.random.Generator, ISeedSequence)):
                return value
            return check_int(name, value, low=0)
        if self.kind == "init_A":
            if isinstance(value, str):
                return check_choice(name, value, self.choices)
            return value  # an array: its shape is checked against the tasks by the solver context
        if self.kind == "params":
            if not isinstance(value, dict):
                raise FastLoRAError(f"{name} must be a dict of arrays keyed like peft.init(), "
                                    f"got {type(value).__name__}")
            return value
        if self.kind in ("peft", "law"):
            return value  # resolved (and checked) by the registry
        if self.kind == "spectrum":
            if value is not None and not isinstance(value, str):
                return value  # a (d, d) array (Python API only): checked against d by make_problem
            from .laws import check_spectrum
            return check_spectrum(value)
        if self.kind in ("int_list", "float_list"):
            if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__") or len(value) == 0:
                raise FastLoRAError(f"{name} must be a non-empty list of positive numbers (one per task, cycled), "
                                    f"got {value!r}")
            if self.kind == "int_list":
                return [check_int(f"{name}[{i}]", v, low=1) for i, v in enumerate(value)]
            return [check_float(f"{name}[{i}]", v, low=0.0, low_open=True) for i, v in enumerate(value)]
        if self.kind == "table":
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise FastLoRAError(f"{name} must be a table (dict) of keyword arguments, got {value!r}")
            return dict(value)
        raise AssertionError(f"unknown option kind {self.kind!r}")  # pragma: no cover

    def describe(self) -> str:
        """Allowed values in words (for docs, errors and ``--help``)."""
        if self.kind == "choice":
            return " | ".join(self.choices)
        if self.kind in ("int", "float"):
            lo = "" if self.low is None else (f"> {self.low}" if self.low_open else f">= {self.low}")
            hi = "" if self.high is None else f"<= {self.high}"
            rng = ", ".join(filter(None, [lo, hi]))
            return f"{self.kind}{f' {rng}' if rng else ''}{' or None' if self.allow_none else ''}"
        return {"count": f"positive int or {POPULATION!r}", "bool": "true | false", "peft": "registered name",
                "law": "registered problem generator",
                "init_A": "standard | zeros | array", "params": "dict of arrays",
                "seed": "int >= 0 or Generator", "table": "table of keyword arguments",
                "spectrum": "identity | spiked[:s] | power-law[:a] (or a (d, d) array in Python)",
                "int_list": "list of positive ints (one per task, cycled)",
                "float_list": "list of positive numbers (one per task, cycled)"}[self.kind]


LORA_ML_ALS, LORA_ML_GD = ("lora-ml", "als"), ("lora-ml", "gd")
REPTILE = ("reptile", None)

_ALL = (
    # make_problem (docs/design.md §3)
    Option("d", "int", 64, "input dimension d (= d_in)", "problem", low=1),
    Option("k", "int", 2, "rank of each task's ground-truth perturbation", "problem", low=1),
    Option("T", "int", 8, "number of retraining tasks", "problem", low=1),
    Option("n", "count", None, "samples per task (None / 'population': population mode)", "problem"),
    Option("noise", "float", 0.0, "noise standard deviation σ of the labels", "problem", low=0.0, high=MAX_NOISE),
    Option("d_out", "int", None, "output dimension (default: d)", "problem", low=1, allow_none=True),
    Option("symmetric", "bool", True, "ground truth U*U*ᵀ (True, the paper's) or B*C*ᵀ", "problem",
           cli=False),  # fastlora solve: --asymmetric
    Option("n_test_tasks", "int", 4, "held-out tasks drawn with the problem", "problem", low=0),
    Option("model", "choice", "linear", "the learner: 'linear' (y = W x + ε, docs/design.md §2) or 'shallow' "
           "(y = cᵀ·sigmoid(W x) + ε, fastlora.shallow)", "problem", choices=("linear", "shallow"), cli=False),
    Option("sampler", "choice", "raw", "how finite samples are drawn: 'raw' data reduced to statistics, or "
           "'stats' (the statistics' exact law, O(T·d²) whatever n; fastlora.tasks.exact_statistics)", "problem",
           choices=("raw", "stats")),
    Option("law", "law", None, "a problem-generator plugin drawing the tasks instead of make_problem's own law "
           "(entry-point group fastlora.problems; fastlora.generators)", "problem", allow_none=True, cli=False),
    Option("law_options", "table", None, "keyword options of the problem generator named by law, e.g. "
           "{private_rank = 1}", "problem", allow_none=True, cli=False),
    # task laws (fastlora.laws, docs/task_laws.md)
    Option("input_law", "choice", "gaussian", "law of the input entries (unit variance): gaussian, rademacher "
           "(±1) or student-t (input_df degrees of freedom)", "problem", choices=("gaussian", "rademacher",
                                                                                   "student-t")),
    Option("input_df", "float", None, "degrees of freedom of student-t inputs (default 5)", "problem", low=2.0,
           low_open=True, allow_none=True),
    Option("input_cov", "spectrum", "identity", "input covariance: identity, a spectrum scaled to mean eigenvalue 1 "
           "('spiked:s': (s, 1, ..., 1); 'power-law:a': i^-a) or (Python) a (d, d) matrix", "problem"),
    Option("noise_law", "choice", "gaussian", "law of the label noise (unit variance, times noise)", "problem",
           choices=("gaussian", "rademacher", "student-t", "laplace")),
    Option("noise_df", "float", None, "degrees of freedom of student-t noise (default 5)", "problem", low=2.0,
           low_open=True, allow_none=True),
    Option("task_ranks", "int_list", None, "rank k_t of each training task's perturbation (cycled over the tasks; "
           "default: k for every task)", "problem", allow_none=True, cli=False),
    Option("task_scales", "float_list", None, "scale s_t of each training task's perturbation s_t·B*_t C*_tᵀ "
           "(cycled; default 1)", "problem", allow_none=True, cli=False),
    # retrain
    Option("method", "choice", "lora-ml", "standard retraining, LoRA-ML (PEFT-ML) or Reptile", "retrain",
           choices=METHODS),
    Option("peft", "peft", "lora_sym", "the PEFT parameterization of LoRA-ML (fastlora.peft.available()); the "
           "shallow network's default is 'lora', the paper's asymmetric adapters", "retrain",
           applies=(LORA_ML_ALS, LORA_ML_GD), model_defaults=(("shallow", "lora"),)),
    Option("peft_options", "table", None, "keyword arguments of the parameterization's class, e.g. {alpha = 16}",
           "retrain", allow_none=True, cli=False),
    Option("rank", "int", None, "adapter rank r (default: the problem's k)", "retrain", low=1, allow_none=True,
           applies=(LORA_ML_ALS, LORA_ML_GD)),
    Option("solver", "choice", "auto", "LoRA-ML solver: 'auto' picks the fastest reliable one per problem kind",
           "retrain", choices=SOLVERS, applies=(LORA_ML_ALS, LORA_ML_GD)),
    Option("backend", "choice", "auto", "array/kernel backend", "retrain",
           choices=BACKEND_CHOICES),
    Option("dtype", "choice", "float64", "floating-point type of the solve", "retrain", choices=DTYPES),
    Option("max_iter", "int", None, "iteration limit (default: the linear model 1000 for retraining, 500 for "
           "fine-tuning; the shallow network by optimizer: L-BFGS 5000, AdamW/Adam 40000 (15000 fine-tuning, the "
           "paper's), Reptile 500 outer steps)", "retrain", low=1, allow_none=True,
           model_defaults=(("linear", {"retrain": 1000, "finetune": 500}),
                           ("shallow", {"lbfgs": 5000, "adamw": 40000, "adam": 40000, "reptile": 500,
                                        "finetune:lbfgs": 5000, "finetune:adamw": 15000, "finetune:adam": 15000}))),
    Option("tol", "float", None, "relative tolerance (change of A for ALS, gradient norm for gd; default 1e-10 "
           "for the linear model, 1e-8 for the shallow network; linear model, 0: no convergence test, "
           "iterate to max_iter unless the objective is zero or no step can lower it)", "retrain",
           low=0.0, high=1.0, allow_none=True, model_defaults=(("linear", 1e-10), ("shallow", 1e-8))),
    Option("seed", "seed", 0, "seed of every random draw (sweeps derive it per row)", "retrain", sweep=False,
           cli=False),  # fastlora solve: its own --seed, of the problem draw too
    Option("threads", "int", None, "Numba threads for large kernels (default: all usable cores)", "retrain", low=1,
           allow_none=True, sweep=False),
    Option("restarts", "int", None, "independent starts; the lowest objective is kept (default: the shallow "
           "network 8 for lora-ml, 1 for standard and reptile, and 5 adapter starts for an L-BFGS fine-tuning "
           "(fastlora.shallow.solve says what was measured); the linear model 1)", "retrain", low=1,
           allow_none=True,
           model_defaults=(("linear", 1), ("shallow", {"standard": 1, "lora-ml": 8, "reptile": 1, "finetune:lbfgs": 5,
                                                       "finetune:adamw": 1, "finetune:adam": 1}))),
    Option("dense_A", "bool", True, "return A as a dense array (False: as a LowRankUpdate S + Q E Qᵀ where the "
           "reduced solver ran)", "retrain", sweep=False, cli=False),  # fastlora solve: --implicit
    # solver options
    Option("init_A", "init_A", {"lora-ml": "standard", "reptile": "zeros"},
           "starting A: the standard retraining solution, zeros, or (Python API only) an array", "solver",
           choices=("standard", "zeros"), applies=(LORA_ML_ALS, LORA_ML_GD, REPTILE)),
    Option("init_params", "params", None, "starting adapter parameters (dict like peft.init())", "solver",
           allow_none=True, applies=(LORA_ML_ALS, LORA_ML_GD), sweep=False, cli=False),
    Option("reduction", "choice", "auto", "solve factored population problems in the span of the task factors "
           "when that is smaller (fastlora.reduction); 'none': the full space", "solver", choices=("auto", "none"),
           applies=(LORA_ML_ALS, LORA_ML_GD)),
    Option("adapter_step", "choice", "auto", "ALS adapter step (fastlora.solvers.adapters)", "solver",
           choices=ADAPTER_STEPS, applies=(LORA_ML_ALS,)),
    Option("inner_iter", "int", 10, "gradient steps per ALS iteration where no exact adapter fit exists", "solver",
           low=1, applies=(LORA_ML_ALS,)),
    Option("power_iter_init", "int", 4, "subspace iterations that start the ALS subspace step", "solver", low=0,
           applies=(LORA_ML_ALS,)),
    Option("acceleration", "choice", "anderson", "ALS extrapolation (safeguarded: never increases the objective)",
           "solver", choices=ACCELERATIONS, applies=(LORA_ML_ALS,)),
    Option("optimizer", "choice", "gd", "first-order method of solver='gd'", "solver", choices=OPTIMIZERS,
           applies=(LORA_ML_GD,)),
    Option("eliminate_A", "bool", True, "L-BFGS over the adapters only, A the closed-form A step of the current "
           "adapters (variable projection)", "solver", applies=(LORA_ML_GD,)),
    Option("lr", "float", None, "step size of gd / adam (default: gd's line search starts at 1/Σ_t tr(Σ_t)/d_in, "
           "1/T on population tasks; 1e-2 for adam; the shallow network's Adam and AdamW 1e-3, torch's)", "solver",
           low=0.0, low_open=True, allow_none=True,
           applies=(LORA_ML_GD,), model_defaults=(("linear", {"adam": 1e-2}),
                                                  ("shallow", {"adam": 1e-3, "adamw": 1e-3}))),
    Option("weight_decay", "float", None, "decoupled weight decay of the shallow network's AdamW (default 0.01, "
           "torch's, which the paper used; 0 for Adam)", "shallow", low=0.0, allow_none=True, sweep=False,
           cli=False, model_defaults=(("shallow", {"adamw": 0.01, "adam": 0.0}),)),
    Option("ftol", "float", None, "the shallow network's stall test: stop when the objective falls by less than "
           "this share over a window (default: 1% of its sampling resolution √(2/N) for L-BFGS and Reptile; "
           "off for Adam and AdamW)", "shallow", low=0.0, allow_none=True, sweep=False, cli=False),
    Option("inner_lr", "float", 0.1, "Reptile inner step (linear model: relative to 1/λ_max(Σ_t))", "solver",
           low=0.0, high=1.0, low_open=True, applies=(REPTILE,)),
    Option("inner_steps", "int", 10, "Reptile inner gradient steps", "solver", low=1, applies=(REPTILE,)),
    Option("outer_lr", "float", 0.5, "Reptile outer step β", "solver", low=0.0, low_open=True, applies=(REPTILE,)),
    # evaluate
    Option("ft_rank", "int", None, "fine-tuning rank (default: the problem's k)", "evaluate", low=1, allow_none=True),
    Option("n_ft", "count", None, "fine-tuning samples (None / 'population': population fine-tuning; the shallow "
           "network has no population mode: a count, default 100, the paper's)", "evaluate",
           model_defaults=(("shallow", 100),)),
    Option("ft_peft", "peft", "lora", "fine-tuning parameterization (asymmetric LoRA, as the paper)", "evaluate"),
    Option("ft_peft_options", "table", None, "keyword arguments of ft_peft's class (by default, ft_peft named "
           "like the retrained peft fine-tunes with the retrained instance and its options)", "evaluate",
           allow_none=True, cli=False),
    Option("rank_tol", "float", 1e-6, "relative singular-value cut of the adaptation rank (above the noise floor)",
           "evaluate", low=0.0, low_open=True),
    Option("noise_floor", "bool", True, "adaptation rank: ignore singular values below twice one task's "
           "least-squares error (finite samples)", "evaluate"),
)

_ALL += (
    # real data instead of make_problem's law (fastlora.datasets): the paper's image protocol
    Option("dataset", "choice", None, "a labelled dataset instead of make_problem's law: 'digits' (scikit-learn's "
           "8×8 digits under the paper's image protocol: class pairs) or 'digits-partitions' (every digit in every "
           "task, tasks label different halves of the classes: conflicting tasks); needs the extra 'data'; "
           "fastlora.datasets", "dataset", choices=("digits", "digits-partitions"), allow_none=True),
    Option("test_fraction", "float", 0.3, "share of each class of a dataset's tasks held out for the metrics",
           "dataset", low=0.0, high=1.0, low_open=True),
)

_ALL += (
    # a landscape census per sweep row (fastlora.landscape.landscape_metrics)
    Option("n_starts", "int", None, "random starts of a landscape census (in a sweep: per row; None: no census)",
           "landscape", low=1, high=MAX_STARTS, allow_none=True),
    Option("census_init", "choice", "normal", "law of the census starts", "landscape",
           choices=("normal", "uniform", "standard")),
    Option("init_scale", "float", 0.1, "scale of the census starts (the paper's N(0, 0.1²): 0.1)", "landscape",
           low=0.0, low_open=True),
)

OPTIONS: dict[str, Option] = {o.name: o for o in _ALL}
PROBLEM = tuple(o.name for o in _ALL if o.group == "problem")
RETRAIN = tuple(o.name for o in _ALL if o.group == "retrain")
SOLVER = tuple(o.name for o in _ALL if o.group == "solver")
EVALUATE = tuple(o.name for o in _ALL if o.group == "evaluate")
LANDSCAPE = tuple(o.name for o in _ALL if o.group == "landscape")
DATASET = tuple(o.name for o in _ALL if o.group == "dataset")


@functools.cache
def solver_options(method: str, solver: str | None) -> tuple[str, ...]:
    """Names of the solver options read by (method, solver)."""
    key = (method, solver if method == "lora-ml" else None)
    return tuple(name for name in SOLVER if key in OPTIONS[name].applies)


def check_solver_options(method: str, solver: str | None, options: dict) -> dict:
    """``options`` validated for (method, solver), with every default filled in."""
    allowed = solver_options(method, solver)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        where = f"method={method!r}" + (f", solver={solver!r}" if method == "lora-ml" else "")
        hints = []
        for name in unknown:
            if name in OPTIONS and OPTIONS[name].applies:
                users = sorted({f"solver={s!r}" if m == "lora-ml" else f"method={m!r}"
                                for m, s in OPTIONS[name].applies})
                hints.append(f"{name} is an option of {' or '.join(users)}")
        raise FastLoRAError(f"unknown option(s) {', '.join(unknown)} for {where}; allowed: "
                            f"{', '.join(allowed) or 'none'}" + (f" ({'; '.join(hints)})" if hints else ""))
    out = {name: OPTIONS[name].default_for(method) for name in allowed}
    out.update({name: OPTIONS[name].check(value) for name, value in options.items()})
    return out


def table(names) -> str:
    """A reStructuredText-ish table of ``names`` for docstrings: name, allowed values, default, meaning."""
    rows = []
    for name in names:
        o = OPTIONS[name]
        default = o.default if not isinstance(o.default, dict) else \
            ", ".join(f"{k}: {v!r}" for k, v in o.default.items())
        shown = default if isinstance(o.default, dict) else repr(default)
        rows.append(f"    ``{name}`` : {o.describe()}, default {shown}"
                    f"\n        {o.doc}" + (f" (used by {', '.join(_where(o))})" if o.applies else ""))
    return "\n".join(rows)


def _where(o: Option) -> list[str]:
    return [f"{m}/{s}" if s else m for m, s in o.applies]


def spec_keys() -> dict[str, Option]:
    """Options usable as sweep keys."""
    return {name: o for name, o in OPTIONS.items() if o.sweep}


class FastLoRADeprecationWarning(DeprecationWarning):
    """An old spelling of an option (``DEPRECATED_NAMES``); the CLI shows it as a ``note:`` line."""


def current_name(name: str, where: str, stacklevel: int = 3) -> str:
    """``name``, or the current spelling of a deprecated one (with a warning naming ``where``)."""
    if name not in DEPRECATED_NAMES:
        return name
    import warnings
    new = DEPRECATED_NAMES[name]
    warnings.warn(f"{where}: {name!r} is deprecated, write {new!r} (the old spelling goes in a future release)",
                  FastLoRADeprecationWarning, stacklevel=stacklevel)
    return new


def rank_or_problem_k(rank, problem_or_tasks):
    """``rank``, or where it is None the problem's k (a list of tasks has none: an error)."""
    if rank is None:
        rank = getattr(problem_or_tasks, "k", None)
        if rank is None:
            raise FastLoRAError("rank is required with a list of tasks (no problem.k to default to)")
    return rank
