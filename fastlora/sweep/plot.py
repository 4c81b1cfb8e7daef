"""Figures of a results store: a statistic over seeds (mean or median) with a band, as in the paper.

``stat="auto"`` and ``band="auto"`` (the defaults) fit the number of seeds: below
``FEW_SEEDS`` seeds per point the median and the interquartile band (one outlier cannot move
them), from ``FEW_SEEDS`` on the mean and the min–max range; ``stat="median"`` with
``band="iqr"`` is the paper's.  The legend's title and the subtitle say which ran.

``y`` may be a condition on a metric, ``"rel_err_A < 1e-6"`` (``<``, ``<=``, ``>``, ``>=``, ``=``,
``!=``): the fraction of each point's seeds that meet it is drawn (rows without a value of the
metric are left out); a 0/1 metric such as ``identified`` is drawn as that fraction as it is.
``hue`` may be a relation between two keys (or a key and a number), ``"ft_rank = rank"``: one line
where it holds, one where it does not.  The title lists the settings the selected rows share that bear on
the metric (no fine-tuning keys under a landscape metric, no census keys under a fine-tuning
metric), and the keys that vary with x as functions of it (``rank = ft_rank = k``); curves
of different hues get their own marker and line style and a slight horizontal offset, so
curves that coincide stay visible; integer x axes (T, n, d, ...) get integer ticks.
"""
from __future__ import annotations

import math
import operator
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import FastLoRAError, check_choice
from .spec import EVALUATE_KEYS, KEYS, LANDSCAPE_KEYS
from .store import METRICS, ResultsStore, key_columns

LABELS = {
    "excess_risk": "excess risk after fine-tuning  ½‖A + Δ̂ − W*‖²",
    "rel_err_A": "relative error of A  ‖A − A*‖ / ‖A*‖",
    "adapt_rank": "adaptation rank of W*_new − A",
    "objective": "retraining objective  Σ_t L_t",
    "n_iter": "solver iterations",
    "seconds": "solve time [s]",
    "test_loss": "test loss (mean squared error on held-out data)",
    "test_accuracy": "test accuracy",
    "spurious_fraction": "fraction of starts ending at a spurious minimum",
    "saddle_fraction": "fraction of starts ending at a saddle",
    "global_fraction": "fraction of starts ending at a global minimum",
    "min_hessian_eig": "smallest projected Hessian eigenvalue at the minima",
    "identified": "fraction of seeds with A* identified (A = A*)",
    "converged": "fraction of seeds converged",
    "ft_converged": "fraction of seeds whose fine-tunings converged",
    "restarts_reached": "starts that reached the kept objective",
    "global_identified_fraction": "fraction of starts at a global minimum with A = A*",
    "global_unidentified_fraction": "fraction of starts at a global minimum with A ≠ A*",
    "n_starts": "census starts",
    "init_scale": "scale of the starts",
    "T": "retraining tasks T",
    "n_ft": "fine-tuning samples n_ft",
    "n": "samples per retraining task n",
    "d": "dimension d",
    "k": "rank of task perturbations k",
    "rank": "adapter rank r",
    "ft_rank": "fine-tuning rank",
    "noise": "noise std σ",
    "method": "method",
    "peft": "parameterization",
}
STATS = ("auto", "mean", "median")
BANDS = ("auto", "minmax", "iqr", "none")
FEW_SEEDS = 10  # below this many seeds per point, stat="auto" is the median with the interquartile band
_AUTO_FEW, _AUTO_MANY = ("median", "iqr"), ("mean", "minmax")
# metrics that hold 0 / 1: their mean over seeds is a fraction
FRACTION_METRICS = ("identified", "converged", "ft_converged")
_CONDITION = re.compile(r"^\s*([A-Za-z_]\w*)\s*(<=|>=|==|!=|=|<|>)\s*(\S+)\s*$")
_OPERATORS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "=": operator.eq,
              "==": operator.eq, "!=": operator.ne}
_BAND_TEXT = {"minmax": "band: min–max", "iqr": "band: interquartile range", "none": "no band"}
_BAND_SHORT = {"minmax": "min–max band", "iqr": "IQR band", "none": "no band"}
# keys that describe how a point was computed, not what was computed: left out of titles
_EXECUTION_KEYS = {"backend", "dtype", "max_iter", "tol", "n_test_tasks", "solver", "adapter_step", "inner_iter",
                   "power_iter_init", "optimizer", "lr"}
# values that are the paper's law and the library's plain defaults: only their absence is news in a title
_QUIET_DEFAULTS = {"symmetric": 1, "sampler": "raw", "input_law": "gaussian", "input_cov": "identity",
                   "noise_law": "gaussian", "restarts": 1}
_TITLE_ORDER = ("d", "d_out", "k", "T", "n", "noise", "sampler", "symmetric", "method", "peft", "rank", "ft_peft",
                "ft_rank", "n_ft")
# metrics that depend on the fine-tuning (evaluate's keys) and on the landscape census (its keys);
# a key of neither group's metrics is left out of the title (it did not enter the plotted number)
_FINE_TUNING_METRICS = {"adapt_rank", "excess_risk", "test_loss", "test_accuracy", "ft_converged"}
_LANDSCAPE_METRICS = {"spurious_fraction", "saddle_fraction", "global_fraction", "min_hessian_eig"}
_STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--"), ("X", ":"), ("*", "-.")]


def label(name: str) -> str:
    return LABELS.get(name, name)


def summarise_values(values, stat: str = "mean", band: str = "minmax") -> tuple[float, float, float]:
    """(centre, low, high) of one point's values over seeds: the mean or median, and the
    min–max range or the interquartile range (25th–75th percentile); ``band="none"``
    gives low = high = centre."""
    v = np.asarray(values, dtype=np.float64)
    centre = float(np.mean(v)) if stat == "mean" else float(np.median(v))
    if band == "minmax":
        return centre, float(v.min()), float(v.max())
    if band == "iqr":
        lo, hi = np.percentile(v, [25, 75])
        return centre, float(lo), float(hi)
    return centre, centre, centre


def image_formats() -> list[str]:
    """The file extensions matplotlib can write (png, pdf, svg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase
    return sorted(FigureCanvasBase.get_supported_filetypes())


def check_image_path(out, option: str = "out") -> None:
    """Refuse a figure path whose extension matplotlib cannot write; ``option`` names it in the message."""
    formats = image_formats()
    extension = Path(out).suffix.lstrip(".")
    if extension.lower() not in formats:
        problem = f"{extension!r} is not an image format matplotlib writes" if extension else "has no file extension"
        raise FastLoRAError(f"{option} {str(out)!r}: {problem}; supported formats: {', '.join(formats)}")


def _check_roles(x: str, hues: list[str], facet: str | None) -> None:
    """--x, each --hue key and --facet must be different keys (a key is one axis of the figure)."""
    roles = [("--x", x), *(("--hue", h) for h in hues), ("--facet", facet)]
    roles = [(role, name) for role, name in roles if name is not None]
    for i, (role, name) in enumerate(roles):
        for other, other_name in roles[i + 1:]:
            if name == other_name:
                named = f"{role} and {other} both name {name!r}" if role != other else f"{role} names {name!r} twice"
                raise FastLoRAError(f"{named}; each of --x, --hue and --facet needs its own key")


def _keys_off_the_metric(y: str) -> set[str]:
    """Keys that do not enter metric ``y``: fine-tuning keys outside its metrics, census keys outside its."""
    off = set()
    if y not in _FINE_TUNING_METRICS:
        off.update(EVALUATE_KEYS)
    if y not in _LANDSCAPE_METRICS:
        off.update(LANDSCAPE_KEYS)
    return off


def _function_of(rows, index: dict, key: str, x: str) -> dict | None:
    """{x value: key value} when every x value comes with one value of ``key`` in ``rows``, else None."""
    mapping = {}
    for r in rows:
        if mapping.setdefault(r[index[x]], r[index[key]]) != r[index[key]]:
            return None
    return mapping


def _covarying_parts(covarying: dict[str, dict], x: str) -> list[str]:
    """Title parts for keys that are functions of x: ``rank = ft_rank = k`` for those equal to x,
    ``n_ft per k: 1→40, 2→60`` for the others."""
    equal = [key for key, mapping in covarying.items() if all(v == xv for xv, v in mapping.items())]
    parts = [" = ".join([*equal, x])] if equal else []
    for key, mapping in covarying.items():
        if key not in equal:
            pairs = ", ".join(f"{xv}→{mapping[xv]}" for xv in sorted(mapping, key=_order))
            parts.append(f"{key} per {x}: {pairs}")
    return parts


def _parse_where(where) -> dict:
    out = {}
    for item in where or ():
        if "=" not in item:
            raise FastLoRAError(f"--where {item!r} must look like key=value")
        key, value = item.split("=", 1)
        if key.strip() in out:
            raise FastLoRAError(f"--where names {key.strip()!r} twice ({key.strip()}={out[key.strip()]} and {item}); "
                                f"keep one value per key (show several with --hue or --facet)")
        out[key.strip()] = value.strip()
    return out


def _matches(value, wanted: str) -> bool:
    return str(value) == wanted or (isinstance(value, (int, float)) and _num(wanted) == value)


def _num(text):
    try:
        return float(text)
    except ValueError:
        return None


def _hue_keys(hue) -> list[str]:
    if hue is None:
        return []
    return [hue] if isinstance(hue, str) else list(hue)


def parse_condition(text: str, columns) -> tuple[str, str, object] | None:
    """``(column, operator, operand)`` of a condition such as ``"rel_err_A < 1e-6"`` or ``"ft_rank = rank"``
    (operand: a number, or another column's name), None when ``text`` is not one."""
    match = _CONDITION.match(text)
    if match is None:
        return None
    left, op, right = match.groups()
    if left not in columns:
        raise FastLoRAError(f"{text!r}: {left!r} is not a column of the store{_older_store(left)}")
    if right in columns:
        return left, op, ("column", right)
    number = _num(right)
    if number is None:
        raise FastLoRAError(f"{text!r}: {right!r} is neither a number nor a column of the store")
    return left, op, ("number", number)


def _older_store(name: str) -> str:
    """Why a metric this version records is missing: the store was written by an older fastlora."""
    if name not in METRICS:
        return ""
    return (f" (written by an older fastlora, which did not record {name}; running its sweep with this version "
            f"adds the column, empty in the earlier rows)")


def _holds(row, index: dict, condition) -> bool | None:
    """Whether a row meets ``condition`` (parse_condition's); None where a value is missing."""
    left, op, (kind, operand) = condition
    a = row[index[left]]
    b = row[index[operand]] if kind == "column" else operand
    if a is None or b is None:
        return None
    try:
        return bool(_OPERATORS[op](a, b))
    except TypeError:
        return bool(_OPERATORS[op](str(a), str(b)))


def resolve_stat(stat: str, band: str, seeds: int) -> tuple[str, str]:
    """``"auto"`` statistic and band for a figure whose points have at least ``seeds`` seeds (module docstring)."""
    auto = _AUTO_FEW if seeds < FEW_SEEDS else _AUTO_MANY
    return (auto[0] if stat == "auto" else stat), (auto[1] if band == "auto" else band)


def plot_results(path, x: str, y: str, hue: str | list[str] | None = None, facet: str | None = None, *,
                 logy: bool = False, logx: bool = False, where=None, out="fig.png", stat: str = "auto",
                 band: str = "auto", title: str | None = None,
                 reference: tuple[str, Callable] | None = None) -> str:
    """Plot ``y`` against ``x`` (one line per ``hue``, one panel per ``facet``) and save to ``out``.

    ``stat``: "auto" | "mean" | "median" over seeds; ``band``: "auto" | "minmax" | "iqr" | "none"
    ("auto": the median and interquartile band below ``FEW_SEEDS`` seeds per point, else the mean
    and min–max range).  ``y``: a metric, or a condition on one (``"rel_err_A < 1e-6"``: the fraction
    of seeds meeting it).  ``hue`` may be a list of keys (one line per combination), or a relation
    such as ``"ft_rank = rank"``.  ``title`` replaces the automatic
    one (the settings all selected rows share).  ``reference=(label, f)`` draws y = f(x)
    (f takes and returns arrays) as a thin black reference line in every panel, e.g. a
    theoretical rate.

    Only rows with a value of ``y`` are plotted.  A key that varies in them must be shown
    (``hue``/``facet``) or fixed (``where``), unless it is a function of ``x`` (each x value
    comes with one value of it, e.g. ``rank = k``) or of a hue or facet key (``restarts`` per
    method): the title states it.  Refused
    (FastLoRAError) before any work: an ``out`` extension matplotlib cannot write and one key
    in two roles; then a ``y`` no selected row has, and with ``logy`` values <= 0 (a log axis
    cannot show them, and dropping them silently would misreport the statistic).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullFormatter

    stat = check_choice("stat", stat, STATS)
    band = check_choice("band", band, BANDS)
    hues = _hue_keys(hue)
    check_image_path(out)
    _check_roles(x, hues, facet)
    with ResultsStore(path) as store:
        columns, rows = store.rows()
    index = {c: i for i, c in enumerate(columns)}
    condition = parse_condition(y, index)
    if condition is not None and condition[0] not in METRICS:
        raise FastLoRAError(f"--y {y!r}: {condition[0]!r} must be a metric: {', '.join(METRICS)}")
    fraction = condition is not None or y in FRACTION_METRICS
    if condition is not None and (stat not in ("auto", "mean") or band not in ("auto", "none")):
        raise FastLoRAError(f"--y {y!r} draws the fraction of seeds meeting the condition: --stat and --band do "
                            f"not apply to it")
    relations = {h: parse_condition(h, index) for h in hues if _CONDITION.match(h)}
    columns, rows, index = _with_derived(columns, rows, index, {y: condition} if condition else {}, relations)
    for role, name in (("--x", x), ("--y", y), *(("--hue", h) for h in hues), ("--facet", facet)):
        if name is not None and name not in index:
            raise FastLoRAError(f"{role} {name!r} is not a column of {path}{_older_store(name)}; columns: "
                                f"{', '.join(key_columns(columns) + [m for m in METRICS if m in index])}")
    if y not in METRICS and condition is None:
        raise FastLoRAError(f"--y {y!r} must be a metric ({', '.join(METRICS)}) or a condition on one, e.g. "
                            f"'rel_err_A < 1e-6'")
    filters = _parse_where(where)
    for key in filters:
        if key not in index:
            raise FastLoRAError(f"--where key {key!r} is not a column of {path}")
    finished = [r for r in rows if r[index["status"]] == "ok"]
    rows = [r for r in finished if all(_matches(r[index[k]], v) for k, v in filters.items())]
    if not finished:
        raise FastLoRAError(f"{path} holds no finished rows to plot")
    if not rows:
        for key, wanted in filters.items():  # name the filter that matches nothing on its own, and what is there
            if not any(_matches(r[index[key]], wanted) for r in finished):
                values = sorted({r[index[key]] for r in finished}, key=_order)
                shown = ", ".join(map(str, values[:12])) + (", ..." if len(values) > 12 else "")
                raise FastLoRAError(f"--where {key}={wanted} matches no finished row of {path}; {key} takes: {shown}")
        raise FastLoRAError(f"no finished rows in {path} match the selection")
    selected = rows
    rows = [r for r in rows if r[index[y]] is not None]
    if not rows:
        with_values = [m for m in METRICS if any(r[index[m]] is not None for r in selected)]
        raise FastLoRAError(f"no selected row of {path} has a value of --y {y!r}; metrics with values: "
                            f"{', '.join(with_values) or 'none'}")
    if logy:
        at_or_below_zero = [r[index[y]] for r in rows if r[index[y]] <= 0]
        if at_or_below_zero:
            raise FastLoRAError(f"--logy: {len(at_or_below_zero)} of {len(rows)} values of {y} are <= 0 (smallest "
                                f"{min(at_or_below_zero):.3g}) and a logarithmic axis cannot show them; plot without "
                                f"--logy")
    if logx:
        not_positive = sorted({r[index[x]] for r in rows if isinstance(r[index[x]], (int, float))
                               and r[index[x]] <= 0})
        if not_positive:
            raise FastLoRAError(f"--logx: {x} takes the value(s) {', '.join(map(str, not_positive))}, which a "
                                f"logarithmic axis cannot show; plot without --logx or leave them out with --where")
    used = {x, facet, *hues, *filters,
            *(c[0] for c in relations.values()), *(c[2][1] for c in relations.values() if c[2][0] == "column")}
    shared, covarying, per_line = {}, {}, {}
    for key in key_columns(columns):
        values = {r[index[key]] for r in rows}
        if len(values) == 1:
            shared[key] = next(iter(values))
        elif key not in used:
            mapping = _function_of(rows, index, key, x)
            if mapping is not None:
                covarying[key] = mapping
                continue
            # a key that follows a hue or facet key (restarts per method) is stated per that key
            follows = next(((by, m) for by in [h for h in hues if h not in relations] + ([facet] if facet else [])
                            if (m := _function_of(rows, index, key, by)) is not None), None)
            if follows is None:
                shown = ", ".join(sorted(map(str, values)))
                raise FastLoRAError(f"key {key!r} varies in the selected rows ({shown}); fix it with --where "
                                    f"{key}=VALUE or show it with --hue/--facet")
            per_line[key] = follows
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        value = r[index[y]]
        panel = r[index[facet]] if facet else None
        line = tuple(r[index[h]] for h in hues) if hues else (y,)
        groups[(panel, line)][r[index[x]]].append(float(value))
    counts = sorted({len(values) for series in groups.values() for values in series.values()})
    if fraction:
        stat, band = "mean", ("none" if band == "auto" else band)
    else:
        stat, band = resolve_stat(stat, band, counts[0])
    panels = sorted({p for p, _ in groups}, key=_order)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False, sharey=True)
    lines = sorted({line for _, line in groups}, key=lambda v: tuple(_order(e) for e in v))
    for ax, panel in zip(axes[0], panels):
        xs_all = sorted({v for (p, _), series in groups.items() if p == panel for v in series}, key=_order)
        numeric = all(isinstance(v, (int, float)) for v in xs_all)
        for rank, line in enumerate(lines):
            series = groups.get((panel, line))
            if not series:
                continue
            marker, linestyle = _STYLES[rank % len(_STYLES)]
            xs = sorted(series, key=_order)
            positions = _offset([_position(v, xs_all) for v in xs], rank, len(lines), xs_all, logx and numeric)
            centre, lo, hi = np.array([summarise_values(series[v], stat, band) for v in xs]).T
            text = _line_label(hues, line, relations) if hues else y
            drawn = ax.plot(positions, centre, marker=marker, linestyle=linestyle, label=text, alpha=0.85,
                            markersize=6, markerfacecolor="none" if rank % 2 else None)
            if band != "none":
                ax.fill_between(positions, lo, hi, alpha=0.15, color=drawn[0].get_color(), linewidth=0)
        if reference is not None and numeric:
            ref_label, ref_fn = reference
            grid = np.array(sorted(float(v) for v in xs_all))
            if logx and len(grid) > 1:
                grid = np.geomspace(grid[0], grid[-1], 50)
            elif len(grid) > 1:
                grid = np.linspace(grid[0], grid[-1], 50)
            ax.plot(grid, np.asarray(ref_fn(grid), dtype=float), color="black", linewidth=1.0, linestyle=(0, (4, 3)),
                    label=ref_label, zorder=1)
        if not numeric:
            ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all])
        ax.set_xlabel(label(x))
        if facet:
            ax.set_title(f"{facet} = {panel}", fontsize=10)
        if logy:
            ax.set_yscale("log")
        if logx and numeric:
            ax.set_xscale("log")
            ticks = [v for v in xs_all if v > 0]
            ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
        elif numeric and all(isinstance(v, int) for v in xs_all):
            if len(xs_all) <= 12:
                ax.set_xticks(xs_all, [str(v) for v in xs_all])
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(f"fraction of seeds with {y}" if condition else label(y))
    summary = "fraction of seeds" if fraction else f"{stat}, {_BAND_SHORT[band]}"
    heading = ", ".join(label(h) for h in hues if h not in relations) if hues else ""
    axes[0][-1].legend(title=f"{heading} — {summary}" if heading else summary, fontsize=8, title_fontsize=8)
    if title is None:
        off_metric = _keys_off_the_metric(condition[0] if condition else y)
        # a setting that changes along x is part of what the figure shows, execution keys included
        leading = _covarying_parts({k: v for k, v in covarying.items() if k not in off_metric}, x)
        leading += [f"{key} per {by}: " + ", ".join(f"{v}→{mapping[v]}" for v in sorted(mapping, key=_order))
                    for key, (by, mapping) in per_line.items() if key not in off_metric]
        title = _settings_title(shared, exclude={x, facet, *hues, *off_metric}, leading=leading)
    seeds = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    if condition is not None:
        statement = f"fraction of {seeds} seed(s) per point with {y}"
    elif fraction:
        statement = f"fraction of {seeds} seed(s) per point with {y} = 1"
    else:
        statement = f"{stat} over {seeds} seed(s) per point; {_BAND_TEXT[band]}"
    result_filters = [f"{key}={value}" for key, value in filters.items() if key not in KEYS]
    if result_filters:  # a selection on a result (a metric, in_regime, ...) is no setting the title shows: say it
        statement += f"; only rows with {', '.join(result_filters)}"
    fig.suptitle(f"{title}\n{statement}" if title else statement, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return str(out)


def _line_label(hues: list[str], values: tuple, relations: dict | None = None) -> str:
    """``lora-ml`` for one hue key; ``lora-ml (ft_rank=3)`` for several; a relation as ``ft_rank = rank``
    or ``not ft_rank = rank``."""
    relations = relations or {}
    shown = [(h if v else f"not {h}") if h in relations else v for h, v in zip(hues, values)]
    rest = ", ".join(str(v) if h in relations else f"{h}={v}" for h, v in zip(hues[1:], shown[1:]))
    return f"{shown[0]} ({rest})" if rest else str(shown[0])


def _with_derived(columns, rows, index, conditions: dict, relations: dict):
    """The rows with a column per derived quantity: a condition on a metric (1.0 / 0.0, None where the
    metric has no value) and a relation between keys (True / False)."""
    if not conditions and not relations:
        return columns, rows, index
    columns = [*columns, *conditions, *relations]
    derived = []
    for r in rows:
        values = [None if (h := _holds(r, index, c)) is None else float(h) for c in conditions.values()]
        values += [bool(_holds(r, index, c)) for c in relations.values()]
        derived.append((*r, *values))
    return columns, derived, {c: i for i, c in enumerate(columns)}


def _settings_title(shared: dict, exclude: set, leading: list[str] = ()) -> str:
    """The shared settings as ``key=value`` parts after the ``leading`` ones, wrapped into lines."""
    keys = [k for k in _TITLE_ORDER if k in shared] + sorted(k for k in shared if k not in _TITLE_ORDER)
    parts = [*leading, *(f"{k}={shared[k]}" for k in keys if k not in exclude and k not in _EXECUTION_KEYS
                         and not (k in _QUIET_DEFAULTS and shared[k] == _QUIET_DEFAULTS[k]))]
    if not parts:
        return ""
    # the fewest lines of at most ~70 characters (the width of one panel), then the narrowest width
    # that keeps that many: even lines, where a greedy wrap could leave one short part alone
    longest = max(len(p) for p in parts)
    count = len(_wrapped(parts, max(70, longest)))
    width = next(w for w in range(longest, max(70, longest) + 1) if len(_wrapped(parts, w)) <= count)
    return "\n".join(_wrapped(parts, width))


def _wrapped(parts: list[str], width: int) -> list[str]:
    """``parts`` joined by ", " into greedy lines of at most ``width`` characters (a longer part alone)."""
    lines, current = [], ""
    for part in parts:
        if current and len(current) + 2 + len(part) > width:
            lines.append(current)
            current = ""
        current = f"{current}, {part}" if current else part
    return [*lines, current]


def _offset(positions, rank: int, count: int, xs_all, log: bool) -> list[float]:
    """Shift line ``rank`` of ``count`` sideways by up to ±1.5% of the axis span (multiplicative
    on a log axis), so equal values of different lines do not hide each other."""
    if count < 2 or len(xs_all) < 2:
        return positions
    share = (rank - (count - 1) / 2) * 0.03 / max(count - 1, 1)
    if log:
        lo, hi = math.log10(min(xs_all)), math.log10(max(xs_all))
        return [p * 10 ** (share * (hi - lo)) for p in positions]
    if all(isinstance(v, (int, float)) for v in xs_all):
        span = float(max(xs_all)) - float(min(xs_all))
    else:
        span = len(xs_all) - 1
    return [p + share * span for p in positions]


def _order(value):
    if isinstance(value, (int, float)):
        return (0, float(value), "")
    return (1, math.inf, str(value))


def _position(value, xs):
    return float(value) if all(isinstance(v, (int, float)) for v in xs) else xs.index(value)
