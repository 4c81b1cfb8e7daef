"""The models fastlora retrains, each an implementation of one small interface (docs/design.md §6).

A model draws problems, retrains its shared parameters on tasks, fine-tunes a new task's adapter
and evaluates a retraining on held-out tasks.  The public functions (:mod:`fastlora.api`:
``make_problem``, ``retrain``, ``finetune``, ``evaluate`` and their ``*_many`` forms) dispatch
to the model a problem or task belongs to — its ``model`` attribute, the linear model where it
has none.  A new model (say, a deeper network, or a generator plugin's) implements :class:`Model`
and is registered in :data:`MODELS`; nothing in the core asks which model it is.
"""
from __future__ import annotations

import abc
import functools
import importlib
import inspect

from .errors import FastLoRAError, check_choice

# name -> "module:class"; loaded on first use, so that drawing a linear problem never imports the others
MODELS = {"linear": "fastlora.linear:LinearModel", "shallow": "fastlora.shallow:ShallowModel"}


class Model(abc.ABC):
    """What a model is to the public functions: each method takes the public function's arguments
    by name (:mod:`fastlora.api` binds a call's positional arguments to those names first), and
    keywords the public signature does not list (a model's own options), which it takes or refuses
    (:func:`call_checked`)."""

    name = "abstract"

    @abc.abstractmethod
    def draw(self, **arguments):
        """``make_problem(..., model=name, **arguments)``: a problem of this model."""

    @abc.abstractmethod
    def retrain(self, **arguments):
        """:func:`fastlora.retrain` of this model's problem or tasks: a RetrainResult."""

    @abc.abstractmethod
    def retrain_many(self, **arguments) -> list:
        """:func:`fastlora.retrain_many`: one result (or, with ``errors="return"``, error) per problem."""

    @abc.abstractmethod
    def finetune(self, **arguments):
        """:func:`fastlora.finetune` of a new task from a retrained start."""

    @abc.abstractmethod
    def finetune_many(self, **arguments) -> list:
        """:func:`fastlora.finetune_many`."""

    @abc.abstractmethod
    def evaluate(self, **arguments) -> dict:
        """:func:`fastlora.evaluate`: metrics of a retraining on held-out tasks."""

    @abc.abstractmethod
    def evaluate_many(self, **arguments) -> list:
        """:func:`fastlora.evaluate_many`."""


@functools.cache
def get_model(name: str) -> Model:
    """The model registered under ``name``."""
    module, cls = MODELS[check_choice("model", name, tuple(MODELS))].split(":")
    return getattr(importlib.import_module(module), cls)()


def model_of(obj) -> Model:
    """The model a problem, task, retrain result, or (nested) list of them belongs to."""
    while isinstance(obj, (list, tuple)) and obj:
        obj = obj[0]
    return get_model(getattr(obj, "model", None) or "linear")


@functools.lru_cache(maxsize=256)
def _parameters(function) -> tuple:
    """(``function``'s parameters, whether it takes any keyword): read once per function, not per call."""
    parameters = inspect.signature(function).parameters
    return parameters, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def call_checked(function, call: str, options: dict, **given):
    """``function(**given, **options)``: ``given``, the arguments the model maps from the public
    call's, as they are; ``options``, the caller's other keywords, refused first where ``function``
    does not take them — a FastLoRAError naming them and what ``call`` (the public call, e.g.
    "fastlora.finetune") takes besides, not a TypeError."""
    parameters, open_ended = _parameters(function)
    if not open_ended:
        takes = [name for name in parameters if name not in given]
        unknown = [name for name in options if name not in takes]
        if unknown:
            listed = (f"besides its public arguments it takes: {', '.join(takes)}" if given else
                      f"its arguments: {', '.join(takes)}")
            raise FastLoRAError(f"{call} takes no argument {', '.join(map(repr, unknown))}; {listed}")
    return function(**given, **options)
