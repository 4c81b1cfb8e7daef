"""The benchmark harness behind ``fastlora bench`` (docs/benchmarking.md).

Every number is measured in the same run as the references it is scored against: one GEMM of
the solvers' shape, drawing the point's raw data, and the baselines in ``fastlora.baselines``
(``bench/baselines``).  Results are written in pytest-benchmark's JSON format and saved where
pytest-benchmark saves them, so its tools (``pytest-benchmark compare``) read them too.

* :mod:`.configs`  the configurations and their ``--quick`` sizes
* :mod:`.case`     a case (a call timed over rounds, its figures, its reference) and its timing
* :mod:`.suites`   the cases of each kind of configuration
* :mod:`.runner`   running configurations, skips, scores
* :mod:`.results`  pytest-benchmark's JSON, machine and commit info, storage
* :mod:`.compare`  ``fastlora bench compare``;  :mod:`.history`  ``fastlora bench history``
"""
from .case import Case, Measured, measure
from .configs import CONFIGS, DEFAULT_CONFIGS, Config
from .runner import BenchRun, Skipped, run_bench
from .suites import Options, build_cases

__all__ = ["CONFIGS", "DEFAULT_CONFIGS", "BenchRun", "Case", "Config", "Measured", "Options", "Skipped",
           "build_cases", "measure", "run_bench"]
