"""Problem-generator plugins: task laws that other packages add (entry-point group ``fastlora.problems``).

A problem generator is a callable (a function, or a class instantiated without arguments)::

    generate(d, k, T, n, noise, seed, d_out, n_test_tasks, **options) -> fastlora.Problem

``make_problem(..., law="name", **options)`` validates the standard arguments as for its own
law and calls it; a sweep spec names it with ``law = "name"`` and its options with
``law_options = { ... }``.  ``n`` is None (population) or a sample count, ``d_out`` is already
resolved (never None), ``seed`` an int >= 0.  make_problem's other arguments (``symmetric``,
``sampler``, ``implicit``, ``model``) reach a generator only where its signature names them;
a value other than make_problem's default that it does not take is refused.  The problem it
returns must carry its ground truth (``A_star``, ``B_star``, ``C_star``, held-out tasks with
``W_star``) and be reproducible from ``seed``: :func:`fastlora.testing.check_problem_generator`
checks both.  See docs/plugins.md, "Problem generators".

The registry is the one of :mod:`fastlora.peft.registry` (lazy, a broken plugin reported by
name, two distributions claiming a name an error naming both); fastlora registers no
generator of its own (``law=None`` is make_problem's own law).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from .errors import FastLoRAError, PluginError, check_int
from .peft.protocol import signature_parameters, takes_any_keyword
from .peft.registry import Kind, Registry
from .problems import Problem, check_problem_arguments
from .seeding import stream

GROUP = "fastlora.problems"
# what every generator receives, validated by make_problem
STANDARD_ARGUMENTS = ("d", "k", "T", "n", "noise", "seed", "d_out", "n_test_tasks")
# make_problem's other arguments, with its defaults: passed on only where the generator names them
OPTIONAL_ARGUMENTS = {"symmetric": True, "sampler": "raw", "implicit": False, "model": "linear"}


def generator_errors(obj) -> list[str]:
    """Everything ``obj`` gets wrong about the generator protocol (empty list: conforms)."""
    if not callable(obj):
        return [f"is a {type(obj).__name__}, not a callable generate(d, k, T, n, noise, seed, d_out, "
                f"n_test_tasks, **options)"]
    params = signature_parameters(obj)
    if params is None or takes_any_keyword(params):
        return []
    missing = [name for name in STANDARD_ARGUMENTS if name not in params]
    return [f"does not take the argument(s) {', '.join(missing)} (every generator receives "
            f"{', '.join(STANDARD_ARGUMENTS)})"] if missing else []


def validate(obj, origin: str = "") -> None:
    errors = generator_errors(obj)
    if errors:
        who = getattr(obj, "__name__", None) or type(obj).__name__
        where = f" (from {origin})" if origin else ""
        raise PluginError(f"problem generator {who!r}{where} violates the protocol: " + "; ".join(errors))


def _describe(generator) -> dict:
    return {"options": options_of(generator)}


KIND = Kind(GROUP, {}, "problem generator", "law", validate, named=False, module="fastlora.generators",
            describe=_describe)
registry = Registry(KIND)
available = registry.available
info = registry.info
register = registry.register
unregister = registry.unregister
reload = registry.reload


def get(law):
    """The generator of a registered name (or ``law`` itself where it is a callable)."""
    if isinstance(law, str):
        return registry.get(law)
    if callable(law):
        validate(law)
        return law
    installed = ", ".join(map(repr, available())) or "none installed"
    raise FastLoRAError(f"law={law!r} must be the name of a problem generator ({installed}) or a callable")


def options_of(generator) -> dict:
    """The generator's own options and their defaults (its arguments beyond the standard ones)."""
    params = signature_parameters(generator) or {}
    return {name: (None if p.default is inspect.Parameter.empty else p.default) for name, p in params.items()
            if name not in STANDARD_ARGUMENTS and name not in OPTIONAL_ARGUMENTS
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_law_options(law, options: dict, given: dict | None = None) -> dict:
    """Refuse option names the generator does not take, and values of make_problem's other arguments
    (``given``, e.g. symmetric=False) other than its defaults that it does not take (before any work:
    specs, make_problem); returns those of ``given`` to pass on."""
    return _check_options(law, get(law), options, given)


def _check_options(law, generator, options: dict, given: dict | None) -> dict:
    """:func:`check_law_options` with ``generator`` the one of ``law``."""
    params = signature_parameters(generator)
    takes_all = params is None or takes_any_keyword(params)
    passed = {}
    for name, value in (given or {}).items():
        if takes_all or name in params:
            passed[name] = value
        elif value != OPTIONAL_ARGUMENTS[name]:
            raise FastLoRAError(f"law={_name(law)!r} does not take {name}={value!r}: its generator draws its own "
                                f"tasks (its options: {', '.join(options_of(generator)) or 'none'})")
    if takes_all:
        return passed
    unknown = sorted(k for k in options if k not in params or k in STANDARD_ARGUMENTS)
    if unknown:
        own = ", ".join(f"{k}={v!r}" for k, v in options_of(generator).items()) or "none"
        raise FastLoRAError(f"law={_name(law)!r} takes no option(s) {', '.join(unknown)}; its options: {own}")
    return passed


def make_problem_of_law(law, law_options: dict, **arguments):
    """``make_problem(law=law, **arguments, **law_options)``: the generator plugin's problem.
    ``arguments``: make_problem's standard ones (checked here as make_problem checks them) and its
    other ones (``OPTIONAL_ARGUMENTS``); ``law_options`` the generator's own."""
    generator = get(law)
    args = dict(zip(STANDARD_ARGUMENTS, check_problem_arguments(*(arguments[k] for k in STANDARD_ARGUMENTS))))
    args.update(_check_options(law, generator, law_options, {k: arguments[k] for k in OPTIONAL_ARGUMENTS}))
    try:
        problem = generator(**args, **law_options)
    except FastLoRAError:
        raise
    except (TypeError, ValueError) as exc:  # a plugin's own refusal of a value: bad input
        raise FastLoRAError(f"law={_name(law)!r}: {exc}") from None
    if not isinstance(problem, Problem):
        raise PluginError(f"problem generator {_name(law)!r} returned a {type(problem).__name__}, not a "
                          f"fastlora.Problem")
    return problem


ROLE_TRAIN, ROLE_TEST, ROLE_NEW = 1, 2, 3


@dataclass(frozen=True, eq=False, repr=False)
class FactorLawProblem(Problem):
    """A :class:`~fastlora.Problem` drawn by :func:`problem_from_factors`: ``new_task(seed)`` draws
    from the same law."""

    draw_factors: object = None

    def new_task(self, seed: int):
        seed = check_int("seed", seed, low=0)
        if seed not in self._extra:
            self._extra[seed] = _factor_task(self, ROLE_NEW, seed)[0]
        return self._extra[seed]


def problem_from_factors(draw_factors, A_star, *, d: int, k: int, T: int, n: int | None, noise: float, seed: int,
                         n_test_tasks: int, d_out: int | None = None) -> FactorLawProblem:
    """A problem whose task t has W*_t = A_star + B_t C_tᵀ with ``(B_t, C_t) = draw_factors(rng)``
    ((d_out, k), (d, k)): the helper a generator plugin returns through (docs/plugins.md).

    Each task — training t, held-out t, or ``new_task(s)`` — draws its factors from its own
    generator seeded by ``numpy.random.SeedSequence(seed, spawn_key=(role, t))`` and, with ``n``
    samples, its data from the next one (x ~ N(0, I), y = W*_t x + ε, ε ~ N(0, noise²)), so a task
    does not depend on n, σ or how many others were drawn.  Held-out tasks keep their ground
    truth; the targets stay factored (no T dense matrices in population mode)."""
    d_out = A_star.shape[0] if d_out is None else d_out
    A_star = np.asarray(A_star, dtype=np.float64)
    if A_star.shape != (d_out, d):
        raise FastLoRAError(f"A_star has shape {A_star.shape}, expected (d_out, d) = ({d_out}, {d})")
    A_star.setflags(write=False)
    proto = FactorLawProblem(A_star, np.empty((T, d_out, k)), np.empty((T, d, k)), [], [], d, d_out, k, T, n,
                             noise, False, seed, draw_factors=draw_factors)
    for t in range(T):
        task, B, C = _factor_task(proto, ROLE_TRAIN, t)
        proto.tasks.append(task)
        proto.B_star[t], proto.C_star[t] = B, C
    proto.test_tasks.extend(_factor_task(proto, ROLE_TEST, t)[0] for t in range(n_test_tasks))
    return proto


def _factor_task(prob: FactorLawProblem, role: int, index: int):
    from .tasks import LowRankTarget, Task
    # the two children of SeedSequence(seed, spawn_key=(role, index))
    factors_rng, data_rng = (stream(prob.seed, (role, index, child)) for child in (0, 1))
    B, C = (np.asarray(f, dtype=np.float64) for f in prob.draw_factors(factors_rng))
    if B.shape != (prob.d_out, prob.k) or C.shape != (prob.d, prob.k):
        raise PluginError(f"draw_factors returned B {B.shape} and C {C.shape}; expected (d_out, k) = "
                          f"({prob.d_out}, {prob.k}) and (d, k) = ({prob.d}, {prob.k})")
    task = Task.population(LowRankTarget(prob.A_star, B, C))
    if prob.n is not None:
        task = task.sample(prob.n, seed=data_rng, noise=prob.noise)
    task.noise = prob.noise
    task.key = (prob.seed, role, index)
    return task, B, C


def _name(law) -> str:
    return law if isinstance(law, str) else getattr(law, "__name__", type(law).__name__)

