"""fastlora: fast, exact solvers for PEFT-based meta-learning of linear models (LoRA-ML).

>>> import fastlora as fl
>>> prob = fl.make_problem(d=20, k=1, T=3, seed=0)
>>> res = fl.retrain(prob, method="lora-ml", peft="lora_sym", rank=1)
>>> fl.evaluate(res, prob)["rel_err_A"] < 1e-6
True

Subpackages load on first use (PEP 562): ``fl.landscape``, ``fl.datasets``, ``fl.generators``, ``fl.shallow``,
``fl.sweep`` (and ``fl.load_results``, from ``fastlora.sweep``).
"""
import importlib as _importlib
from importlib import metadata as _metadata

# first: lets a source tree (a clone) import its sibling kernels/ as fastlora.kernels
from . import _source_tree as _source_tree
from . import peft
from .api import evaluate, evaluate_many, finetune, finetune_many, make_problem, retrain, retrain_many
from .arrays import array_module
from .backends import get_backend
from .errors import BackendUnavailableError, DivergenceError, FastLoRAError, PerformanceWarning, PluginError
from .finetuning import FinetuneResult
from .problems import Problem
from .solvers.common import RetrainResult
from .tasks import LowRankTarget, Task

try:
    __version__ = _metadata.version("fastlora")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+source"

# loaded on first attribute access, so that ``import fastlora`` stays light (PEP 562)
_SUBPACKAGES = ("datasets", "generators", "landscape", "shallow", "sweep")
_LAZY_NAMES = {"load_results": "sweep"}


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return _importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        return getattr(_importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_SUBPACKAGES, *_LAZY_NAMES})


__all__ = ["BackendUnavailableError", "DivergenceError", "FastLoRAError", "FinetuneResult", "LowRankTarget",
           "PerformanceWarning", "PluginError", "Problem", "RetrainResult", "Task", "array_module", "evaluate",
           "evaluate_many", "finetune", "finetune_many", "get_backend", "load_results", "make_problem", "peft",
           "retrain", "retrain_many"]
