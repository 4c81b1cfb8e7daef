"""Resumable theory sweeps: TOML grid specs, a SQLite results store, local or Dask execution.

>>> from fastlora.sweep import load_spec, run_sweep, load_results   # doctest: +SKIP
>>> spec = load_spec("examples/vary_T.toml")
>>> run_sweep(spec, "results.sqlite", workers=2)
>>> df = load_results("results.sqlite")                             # a pandas DataFrame

``ResultsStore(path)`` opens a store read-only (readers never write, so stores on
read-only media and finished archives are readable); ``ResultsStore(path, spec)`` is
the sweep driver's writer.
"""
from .runner import SweepSummary, run_point, run_rows, run_sweep
from .spec import Spec, load_spec, parse_spec
from .store import ResultsStore, export_results, load_results

__all__ = ["ResultsStore", "Spec", "SweepSummary", "export_results", "load_results", "load_spec", "parse_spec",
           "run_point", "run_rows", "run_sweep"]
