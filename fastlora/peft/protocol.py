"""The parameterization protocol (versions 1 and 2) and its validation.

A parameterization is an object (usually a class instantiated with its hyper-parameters)
with these members; all arrays are batched over tasks (leading axis T) and belong to
the backend's array module (numpy or cupy — use :func:`fastlora.array_module`)::

    name: str                                   # the registry key
    api_version = 1
    shapes(d_out, d_in, rank) -> dict[str, tuple]          # one task's parameter shapes
    init(rng, d_out, d_in, rank, T) -> dict[str, ndarray]  # rng: numpy Generator; numpy arrays
    delta(params) -> (T, d_out, d_in)                      # Δ(θ_t) for every task
    pullback(params, G) -> dict[str, ndarray]              # ∂/∂θ of Σ_t ⟨G_t, Δ(θ_t)⟩, G (T, d_out, d_in)

Optional members (absent or ``None`` when not provided):

    factors(params) -> (B, C)         # Δ = B Cᵀ, B (T, d_out, m), C (T, d_in, m)
    best_fit(R, rank) -> params       # argmin_θ ½‖Δ(θ) − R_t‖²_F per task (exact)
    family: "general" | "psd" | "full" | None
        "general": Δ ranges over all matrices of rank ≤ r   (needs factors, from_factors, best_fit)
        "psd":     Δ ranges over all PSD matrices of rank ≤ r (same needs; from_factors(U, U))
        "full":    Δ is any matrix                             (needs best_fit)
    from_factors(B, C) -> params      # params with Δ = B Cᵀ exactly (families general and psd)
    implicit_gradient: bool           # pullback accepts a fastlora.linop.SharedPlusLowRank as G
    canonicalize(params) -> params    # fix sign/rotation freedom so results are unique
    square_only: bool                 # needs d_out == d_in
    fast_paths: dict[str, object]     # backend name -> object overriding delta/pullback/best_fit
    frozen: frozenset[str]            # parameters that are carried but never trained (e.g. VeRA's
        shared random matrices); pullback does not return them and solvers do not update them
    uses_base: bool                   # Δ depends on the shared matrix A (e.g. DoRA); then
        init(rng, d_out, d_in, rank, T, base), delta(params, base), pullback(params, G, base)
        get base=A (d_out, d_in), and pullback may return the extra ∂/∂A (summed over tasks,
        beyond the identity path of A + Δ) under the key "base".  ALS cannot use these
        (its A step is closed-form only for Δ independent of A); gd, finetune and evaluate can.

Version 2 adds one optional member (version-1 plugins work unchanged):

    shared: tuple[str, ...]           # task-independent trainable parameters (e.g. the factors B, C
        of a tied LoRA Δ_t = B·diag(s_t)·Cᵀ): shapes() lists them without the task axis, init()
        returns them once (no task axis), delta()/factors() receive them unbatched beside the
        per-task ones, and pullback() returns their gradient summed over tasks.  Needs
        api_version = 2; not also frozen.

Optional members added later, for either version (absent: the behaviour before them):

    best_fit_given_shared(R, rank, shared) -> params   # with ``shared``: argmin over the per-task
        parameters of ½‖Δ(θ_t, shared) − R_t‖²_F per task, the shared ones fixed (``shared``: their
        unbatched arrays); returns the per-task parameters only.  ALS uses it on population tasks.
    init_from_residuals: bool         # init(rng, d_out, d_in, rank, T, residuals=None) gets the tasks as
        residuals R_t = −∇_W L_t(A₀) at the starting A₀ (T, d_out, d_in), numpy (population:
        W*_t − A₀; with the standard start, each task minus their mean); None where no tasks are
        at hand (the kit's shape checks, fine-tuning's start), so the argument needs a default.
    basis_equivariance: "two_sided" | "same_basis" | None
        "two_sided":  for orthogonal U (d_out), V (d_in), change_basis(θ, U, V) has Δ = U Δ(θ) Vᵀ;
        "same_basis": the same for U = V only (square updates such as U Uᵀ);
        implied by family ("general", "full": two_sided; "psd": same_basis).  The span reduction
        (fastlora.reduction) runs only for such classes.
    change_basis(params, Q_out, Q_in) -> params   # Δ = Q_out Δ(θ) Q_inᵀ, Q with orthonormal columns
        (m, the parameters' size, to d); linear in θ, norm-preserving, composable.  Needed to
        declare basis_equivariance beyond what the family implies.
    jvp(params, direction) -> (T, d_out, d_in)         # DΔ_θ[dθ]: Δ's derivative along ``direction``
        (a dict like params); arrays may carry leading batch axes before the task axis
    curvature(params, G, direction) -> dict            # D²Δ_θ[dθ]ᵀ G: the second-order term of the
        Hessian-vector product of Σ_t L_t(A + Δ(θ_t)), G = ∇L_t at Δ(θ_t) (same batch axes)
    symmetry_tangents(params) -> list[dict]            # directions along which Δ(θ) is constant
        (e.g. U → U O for Δ = U Uᵀ): the landscape tools project them out of Hessian spectra.
        The three together are what :mod:`fastlora.landscape` needs (second derivatives, exactly);
        the built-ins ``lora`` and ``lora_sym`` implement them, and a plugin that does is analysed too.
    rank_options: tuple[str, ...]     # constructor options that are ranks besides ``rank`` (e.g.
        "private_rank"), read back as attributes of the instance: checked against min(d_out, d_in)
        wherever ``rank`` is, and shown by ``fastlora plugins``.

What the solvers make of it: ``gd`` needs only the required members; ``als`` uses
``best_fit`` (exact adapter step) when there is one, the ``family`` to whiten the
finite-sample step or to run subspace iteration on factored targets, and otherwise
falls back to inner gradient steps (not for ``uses_base``: a clear error).  With
``shared`` parameters ALS alternates the per-task parameters (``best_fit_given_shared`` on
population tasks where there is one, else inner gradient steps, per task), the shared ones
(inner gradient steps on the total objective) and A (closed form); fine-tuning a new task
keeps A and the shared parameters of a retrain result and trains the per-task ones.
Problems with shared parameters are solved one at a time.  Solvers reach the optional
members through the helpers below (:func:`per_task_best_fit`, :func:`call_init`,
:func:`is_basis_equivariant`, :func:`change_basis`).
"""
from __future__ import annotations

import inspect

from ..errors import FastLoRAError, PluginError

API_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
REQUIRED_METHODS = ("shapes", "init", "delta", "pullback")
OPTIONAL_METHODS = ("factors", "best_fit", "from_factors", "canonicalize", "best_fit_given_shared", "change_basis",
                    "jvp", "curvature", "symmetry_tangents")
SECOND_ORDER = ("jvp", "curvature", "symmetry_tangents")  # what the landscape tools need
FAMILIES = (None, "general", "psd", "full")
EQUIVARIANCES = (None, "two_sided", "same_basis")
# the basis equivariance a family implies, and lifts through factors / from_factors (or, "full", directly)
_FAMILY_EQUIVARIANCE = {"general": "two_sided", "full": "two_sided", "psd": "same_basis"}


def protocol_errors(obj) -> list[str]:
    """Everything ``obj`` gets wrong about the protocol (empty list: conforms)."""
    errors = []
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        errors.append("has no string attribute 'name'")
    version = getattr(obj, "api_version", None)
    if version not in SUPPORTED_VERSIONS:
        errors.append(f"api_version is {version!r}; this fastlora speaks versions "
                      f"{', '.join(map(str, SUPPORTED_VERSIONS))}")
    for meth in REQUIRED_METHODS:
        if not callable(getattr(obj, meth, None)):
            errors.append(f"lacks the required method {meth}()")
    for meth in OPTIONAL_METHODS:
        value = getattr(obj, meth, None)
        if value is not None and not callable(value):
            errors.append(f"optional member {meth} must be callable or None")
    family = getattr(obj, "family", None)
    if family not in FAMILIES:
        errors.append(f"family={family!r} must be one of {FAMILIES}")
    needs = {"general": ("factors", "from_factors", "best_fit"), "psd": ("factors", "from_factors", "best_fit"),
             "full": ("best_fit",)}.get(family, ())
    for meth in needs:
        if not callable(getattr(obj, meth, None)):
            errors.append(f"family={family!r} needs the method {meth}()")
    shared = getattr(obj, "shared", None)
    if shared is not None:
        if isinstance(shared, str) or not all(isinstance(n, str) for n in shared):
            errors.append(f"shared must be a tuple of parameter names, got {shared!r}")
        elif version != 2:
            errors.append("shared parameters need api_version = 2")
        elif set(shared) & set(getattr(obj, "frozen", None) or ()):
            errors.append(f"parameters {sorted(set(shared) & set(obj.frozen))} cannot be both shared and frozen")
    fast = getattr(obj, "fast_paths", None)
    if fast is not None and not isinstance(fast, dict):
        errors.append("fast_paths must be a dict mapping backend names to objects")
    errors.extend(_additions_errors(obj, shared))
    return errors


def _additions_errors(obj, shared) -> list[str]:
    """The optional members added after protocol version 2 (module docstring)."""
    errors = []
    if callable(getattr(obj, "best_fit_given_shared", None)) and not shared:
        errors.append("best_fit_given_shared() fits the per-task parameters given the shared ones: it needs "
                      "shared = (...) (without shared parameters, write best_fit)")
    from_residuals = getattr(obj, "init_from_residuals", False)
    if not isinstance(from_residuals, bool):
        errors.append(f"init_from_residuals must be True or False, got {from_residuals!r}")
    elif from_residuals and callable(getattr(obj, "init", None)) and not _takes_keyword(obj.init, "residuals"):
        errors.append("init_from_residuals = True needs init(rng, d_out, d_in, rank, T, residuals=None)")
    declared = getattr(obj, "basis_equivariance", None)
    if declared not in EQUIVARIANCES:
        errors.append(f"basis_equivariance={declared!r} must be one of {EQUIVARIANCES}")
    elif declared is not None:
        implied = _FAMILY_EQUIVARIANCE.get(getattr(obj, "family", None))
        if getattr(obj, "uses_base", False):
            errors.append("basis_equivariance cannot be declared with uses_base (Δ depends on A itself)")
        elif not callable(getattr(obj, "change_basis", None)) and implied != declared:
            errors.append(f"basis_equivariance={declared!r} needs the method change_basis(params, Q_out, Q_in)")
    names = getattr(obj, "rank_options", None)
    if names is not None:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            errors.append(f"rank_options must be a tuple of option names, got {names!r}")
        else:
            for name in names:
                value = getattr(obj, name, None)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    errors.append(f"rank option {name!r} must be readable as an integer attribute >= 0 of the "
                                  f"instance, got {value!r}")
    return errors


def _takes_keyword(fn, name: str) -> bool:
    params = signature_parameters(fn)
    return params is None or name in params or takes_any_keyword(params)


def signature_parameters(fn) -> dict | None:
    """``fn``'s parameters by name, or None where it has no signature to read (a builtin: trusted)."""
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None


def takes_any_keyword(params: dict) -> bool:
    """Whether parameters (:func:`signature_parameters`) include a ``**kwargs``."""
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def validate(obj, origin: str = "") -> None:
    errors = protocol_errors(obj)
    if errors:
        who = getattr(obj, "name", None) or type(obj).__name__
        where = f" (from {origin})" if origin else ""
        raise PluginError(f"parameterization {who!r}{where} violates the protocol: " + "; ".join(errors))


def capabilities(obj) -> dict:
    """What the solvers can use of ``obj`` (shown by ``fastlora plugins``)."""
    return {
        "best_fit": callable(getattr(obj, "best_fit", None)),
        "family": getattr(obj, "family", None),
        "factors": callable(getattr(obj, "factors", None)),
        "implicit_gradient": bool(getattr(obj, "implicit_gradient", False)),
        "fast_paths": sorted((getattr(obj, "fast_paths", None) or {}).keys()),
        "uses_base": bool(getattr(obj, "uses_base", False)),
        "frozen": sorted(getattr(obj, "frozen", None) or ()),
        "shared": list(shared_names(obj)),
        "api_version": getattr(obj, "api_version", None),
        "best_fit_given_shared": callable(getattr(obj, "best_fit_given_shared", None)),
        "init_from_residuals": bool(getattr(obj, "init_from_residuals", False)),
        "basis_equivariance": is_basis_equivariant(obj),
        "rank_options": rank_options(obj),
        "second_order": has_second_order(obj),
    }


def has_second_order(obj) -> bool:
    """Whether ``obj`` has the exact derivatives the landscape tools need (jvp, curvature, symmetry_tangents)."""
    return all(callable(getattr(obj, name, None)) for name in SECOND_ORDER)


def check_shape_supported(peft, d_out: int, d_in: int, argument: str = "peft") -> None:
    """Refuse a weight shape the parameterization cannot represent (``square_only`` needs d_out = d_in;
    each of its ``rank_options`` must be <= min(d_out, d_in)).  ``argument``: the caller's name of it."""
    if getattr(peft, "square_only", False) and d_out != d_in:
        raise FastLoRAError(f"{argument}={peft.name!r} needs square weights but d_out={d_out} != d_in={d_in}; "
                            f"use {argument}='lora'")
    for name, value in rank_options(peft).items():
        if value > min(d_out, d_in):
            raise FastLoRAError(f"{argument}_options[{name!r}]={value} is too large for {argument}={peft.name!r}; "
                                f"a rank must be <= min(d_out, d_in) = {min(d_out, d_in)}")


def rank_options(peft) -> dict:
    """The parameterization's ranks besides ``rank``: {option name: value} (``rank_options``)."""
    return {name: getattr(peft, name) for name in (getattr(peft, "rank_options", None) or ())}


def per_task_best_fit(peft, backend_name: str):
    """``best_fit_given_shared`` for this backend (a fast path's where it has one), or None: the
    exact per-task fit given the shared parameters, (R, rank, shared) -> per-task params."""
    if not shared_names(peft):
        return None
    fit = implementation(peft, backend_name, "best_fit_given_shared")
    return fit if callable(fit) else None


def call_init(peft, rng, d_out: int, d_in: int, rank: int, T: int, base=None, residuals=None) -> dict:
    """``peft.init`` with the base (``uses_base``) and, for ``init_from_residuals`` classes, the tasks'
    residuals at the start: an array (T, d_out, d_in), or a function returning it (called only
    for such a class)."""
    args = (rng, d_out, d_in, rank, T) + (() if base is None else (base,))
    if not getattr(peft, "init_from_residuals", False):
        return peft.init(*args)
    return peft.init(*args, residuals=residuals() if callable(residuals) else residuals)


def is_basis_equivariant(peft) -> str | None:
    """"two_sided", "same_basis" or None: the declared ``basis_equivariance``, else the one the
    family implies; None for ``uses_base`` (Δ depends on A)."""
    if getattr(peft, "uses_base", False):
        return None
    declared = getattr(peft, "basis_equivariance", None)
    return declared if declared is not None else _FAMILY_EQUIVARIANCE.get(getattr(peft, "family", None))


def change_basis(peft, params: dict, Q_out, Q_in) -> dict:
    """Parameters with Δ = Q_out Δ(θ) Q_inᵀ: ``peft.change_basis`` where it has one, else through
    the family (``factors`` / ``from_factors``; "full": the matrix itself)."""
    own = getattr(peft, "change_basis", None)
    if callable(own):
        return own(params, Q_out, Q_in)
    if getattr(peft, "family", None) == "full":
        name = next(iter(params))
        return {name: Q_out @ params[name] @ Q_in.T}
    B, C = peft.factors(params)
    B_full = Q_out @ B
    return peft.from_factors(B_full, B_full if C is B else Q_in @ C)


def shared_names(peft) -> tuple[str, ...]:
    """The parameterization's task-independent trainable parameters (protocol version 2)."""
    return tuple(getattr(peft, "shared", None) or ())


def trainable(peft, params: dict) -> list[str]:
    """Names of the parameters solvers update (all but ``peft.frozen``)."""
    frozen = getattr(peft, "frozen", None) or ()
    return [name for name in params if name not in frozen]


def bind_base(peft, backend_name: str, base):
    """(delta(params), pullback(params, G)) for this backend, with ``base`` bound where the
    parameterization uses it; pullback's "base" entry is left in the returned dict."""
    delta, pullback = implementation(peft, backend_name, "delta"), implementation(peft, backend_name, "pullback")
    if not getattr(peft, "uses_base", False):
        return delta, pullback
    return (lambda params: delta(params, base)), (lambda params, G: pullback(params, G, base))


def implementation(peft, backend_name: str, member: str):
    """``peft.member``, or the override registered for this backend in ``fast_paths``."""
    fast = (getattr(peft, "fast_paths", None) or {}).get(backend_name)
    impl = getattr(fast, member, None) if fast is not None else None
    return impl if impl is not None else getattr(peft, member, None)
