"""The ``fastlora bench`` configurations, at their ``--quick`` sizes, through pytest-benchmark's fixture.

    python -m pytest bench --benchmark-enable                   # time every case, one group per config
    python -m pytest bench --benchmark-enable --benchmark-autosave
    python -m pytest bench --benchmark-enable --benchmark-compare --benchmark-compare-fail=median:10%

pytest-benchmark's statistics are the wall time of one call of a case; ``extra_info`` holds the
figures ``fastlora bench`` reports for it (per iteration, per row, the score against its
reference measured in the same session).  The default test run passes ``--benchmark-disable``
(pyproject): then only the smoke config runs, once, as a check of the harness.
"""
import time

import pytest

from fastlora.bench import CONFIGS, BenchRun, Options, build_cases
from fastlora.bench.case import finish, measure, round_seconds, warm_up
from fastlora.bench.runner import plan, score

OPTIONS = Options(quick=True)
RUNNABLE, SKIPPED = plan(list(CONFIGS), None, quick=True)
CASES = {case.name: case for cfg, backends in RUNNABLE for case in build_cases(cfg, backends, OPTIONS)}
PARAMS = [pytest.param(name, id=name.replace("[", "-").rstrip("]")) for name in CASES] + \
    [pytest.param(skip.config, marks=pytest.mark.skip(reason=skip.reason)) for skip in SKIPPED]
CHECKED_WHEN_DISABLED = "smoke"


@pytest.fixture(scope="module")
def session_run():
    """The cases measured so far (references are looked up here; one not yet run is measured)."""
    run = BenchRun(OPTIONS, list(CONFIGS))

    def find(name):
        found = next((m for m in run.results if m.case.name == name), None)
        if found is None:
            case = CASES.get(name)
            if case is not None:
                found = measure(case, find)
                run.results.append(found)
        return found
    run.find = find
    return run


@pytest.mark.parametrize("case", PARAMS)
def test_case(benchmark, case, session_run):
    case = CASES[case]
    if benchmark.disabled and case.config != CHECKED_WHEN_DISABLED:
        pytest.skip("benchmarks disabled: python -m pytest bench --benchmark-enable times every config")
    benchmark.group = case.config
    warm_up(case)
    seconds, outputs = [], []

    def one_call():
        started = time.perf_counter()
        out = case.call()
        seconds.append(round_seconds(case, out, time.perf_counter() - started))
        outputs.append(out)
        return out

    benchmark.pedantic(one_call, rounds=case.rounds, iterations=case.iterations, warmup_rounds=0)
    result = finish(case, seconds, outputs[-1], session_run.find)
    score(result, session_run)
    session_run.results.append(result)
    # the fixture's statistics are per call; the score and figures per case.per, as fastlora bench's
    benchmark.extra_info.update(case=case.name, per="call", figure_per=case.per, figure_median=result.median,
                                params={"backend": case.backend, "variant": case.variant, **case.params},
                                **result.extra_info)
    assert all(s >= 0 for s in seconds)
