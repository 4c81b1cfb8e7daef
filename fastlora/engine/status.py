"""Status codes of a solve, and the one place that turns them into messages and errors.

The engine's loops (compiled or not) and the Python driver end every problem with one of
these integers; :func:`describe` makes its message, whether it converged, and the error a
failed problem carries.  Whether that error is raised is decided by the caller once, the
same for one problem and for many (``errors="raise" | "return"``).
"""
from __future__ import annotations

import numpy as np

RUNNING = 0
# converged
ZERO = 1             # the objective reached zero to tolerance
SMALL_STEP = 2       # the relative change of A (ALS, Reptile) or the relative gradient norm (gd) fell below tol
CONSTANT = 3         # the objective stayed constant to rounding over the stall window
LINE_SEARCH_FLOOR = 4  # no step lowers the objective: it is at its rounding floor
CLOSED_FORM = 5      # standard retraining: one linear solve
EXACT_FIT = 6        # an exact adapter fit (fine-tuning): one step
STALLED = 8          # the objective fell by at most ftol (relative) over a window (the shallow network's test)
# not converged
MAX_ITER = 7
# failed (the problem carries a DivergenceError)
NONFINITE_START = -1
NONFINITE = -2
GREW = -3
LINE_SEARCH_NONFINITE = -4

CONVERGED = (ZERO, SMALL_STEP, CONSTANT, LINE_SEARCH_FLOOR, CLOSED_FORM, EXACT_FIT, STALLED)
FAILED = (NONFINITE_START, NONFINITE, GREW, LINE_SEARCH_NONFINITE)

# the divergence test: an objective above this many times its starting scale has diverged
DIVERGENCE_FACTOR = 1e6
# the stall test: the objective over this many iterations (and one more) within rounding
STALL_WINDOW = 5


def converged_each(codes) -> np.ndarray:
    """Whether each status code is a converged one (:func:`describe`'s second value, for a batch)."""
    return np.isin(codes, CONVERGED)


def step_option(method: str, solver: str | None = None, optimizer: str | None = None) -> str | None:
    """The option that sets a solve's step size, which a divergence message tells the user to
    lower; None where the solver chooses its own steps (ALS, L-BFGS, closed forms)."""
    if method == "reptile":
        return "inner_lr or outer_lr"
    if solver == "gd" and optimizer in ("gd", "adam", "adamw"):
        return "lr"
    return None


def describe(status: int, iteration: int, value: float, scale: float, max_iter: int, step: str | None = None):
    """(message, converged, error or None) of a problem that ended with ``status`` at
    ``iteration`` with objective ``value`` (the last one computed) and divergence scale ``scale``;
    ``step``: the option that set the step size (:func:`step_option`), named in a divergence's advice."""
    from ..errors import DivergenceError
    messages = {
        ZERO: "objective reached zero (to tolerance)",
        SMALL_STEP: "relative change below tol",
        CONSTANT: "objective constant to rounding",
        LINE_SEARCH_FLOOR: "line search found no decrease: the objective is at its rounding floor",
        CLOSED_FORM: "closed form",
        EXACT_FIT: "exact fit",
        STALLED: "objective decreased by less than ftol (relative) over the stall window",
        MAX_ITER: f"reached max_iter={max_iter}",
    }
    if status in messages:
        return messages[status], status in CONVERGED, None
    too_far = (f"the step is too large for this problem (lower {step})" if step else
               "this solver chooses its own steps, so the data are ill-scaled (rescale X and Y)")
    if status == NONFINITE_START:
        text = (f"the objective is {value} at the starting point: the data or the initialisation are not finite or "
                f"are ill-scaled")
    elif status == NONFINITE:
        text = (f"the objective became {value} at iteration {iteration}: {too_far}")
    elif status == GREW:
        text = (f"the objective grew to {value:.4g} at iteration {iteration}, more than {DIVERGENCE_FACTOR:.0e} times "
                f"its starting scale {scale:.4g}: {too_far}")
    elif status == LINE_SEARCH_NONFINITE:
        text = (f"the line search found no step with a finite objective at iteration {iteration}: the objective or "
                f"its gradient is not finite there (ill-scaled data?)")
    else:  # pragma: no cover - every code is listed above
        raise AssertionError(f"unknown status code {status}")
    return text, False, DivergenceError(text)
