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

What the solvers make of it: ``gd`` needs only the required members; ``als`` uses
``best_fit`` (exact adapter step) when there is one, the ``family`` to whiten the
finite-sample step or to run subspace iteration on factored targets, and otherwise
falls back to inner gradient steps (not for ``uses_base``: a clear error).  With
``shared`` parameters ALS alternates the per-task parameters (inner gradient steps, per
task), the shared ones (inner gradient steps on the total objective) and A (closed form);
fine-tuning a new task keeps A and the shared parameters of a retrain result and trains
the per-task ones.  Problems with shared parameters are solved one at a time.
"""
from __future__ import annotations

from ..errors import PluginError

API_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
REQUIRED_METHODS = ("shapes", "init", "delta", "pullback")
OPTIONAL_METHODS = ("factors", "best_fit", "from_factors", "canonicalize")
FAMILIES = (None, "general", "psd", "full")


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
    return errors


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
    }


def check_shape_supported(peft, d_out: int, d_in: int) -> None:
    """Refuse a weight shape the parameterization cannot represent (``square_only`` needs d_out = d_in)."""
    if getattr(peft, "square_only", False) and d_out != d_in:
        from ..errors import FastLoRAError
        raise FastLoRAError(f"peft={peft.name!r} needs square weights but d_out={d_out} != d_in={d_in}; "
                            f"use peft='lora'")


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
