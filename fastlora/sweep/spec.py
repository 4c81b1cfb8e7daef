"""Sweep specs (TOML) and their validation — every key is checked before any work starts.

::

    name = "vary_T"
    repeats = 5                 # seeds per grid point
    seed = 0                    # optional base of the derived seeds
    [grid]                      # the cartesian product of these lists ([[grid]]: a union of products)
    T = [1, 2, 3, 5, 10]
    method = ["standard", "lora-ml", "reptile"]
    [fixed]                     # scalars shared by every point
    d = 10
    k = 1
    n = 5000                    # "population" means n=None
    noise = 0.01

Keys are arguments of ``make_problem`` / ``retrain`` / ``evaluate`` (listed in ``KEYS``).
Every grid point's combination is checked as the Python API would check it: a solver option
its method and solver do not take (the schema of fastlora.options), ``peft_options`` its
parameterization refuses, a census (``n_starts``) the landscape tools cannot run.
A spec with ``law = "name"`` (and ``law_options = { ... }``) draws its tasks from that
problem-generator plugin (``make_problem(..., law=...)``, fastlora.generators).
A spec with a ``dataset`` key (e.g. ``dataset = "digits"``) draws its tasks from that dataset
under the paper's image protocol (``fastlora.datasets.load``, split seeded by the row's seed,
``test_fraction`` its protocol key) instead of ``make_problem``; the dataset fixes d, T and n,
so those problem keys are refused there, and its learner is the shallow network.
Each row's seed is derived from the spec's base seed, the point's problem keys and the
repeat index (SHA-256), so reruns and resumed runs give identical numbers, and methods
are compared on the same tasks.

**Pairing** (top-level ``pairing``; docs/pairing.md): under ``"paired"`` (the default of new
stores) the ground truth is drawn from a second seed, ``truth_seed``, that hashes only the keys
that shape it (``TRUTH_KEYS``) and the repeat, so every n, σ, sampler and data law of one
repeat sees the same A*, task factors and test tasks; samples and noise come from the row's
``seed``.  ``"fresh:n"`` (any problem keys after the colon) draws a fresh truth per value of
those keys too; ``"per-point"`` is the rule of stores written before pairing existed (one seed
for truth and data).  A store records its rule and keeps it: an old store resumes per point.

Every row records its resolved defaults: the keys ``DEFAULTS`` names, and — filled per point
where the spec is silent — ``sampler``, the data law (``input_law``, ``input_cov``,
``noise_law``), ``rank``, ``ft_rank`` and ``restarts``, and in specs with shallow-network points
``peft`` (``FILLED_CONSTANTS``, ``FILLED_PER_POINT``, ``FILLED_PER_MODEL``).
Filled keys do not enter row keys or seeds, so stores written before they were recorded resume.
Points outside the theorem's regime (fastlora.regime) are named in a
:class:`~fastlora.errors.RegimeWarning` when a spec is read.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .. import options as schema
from ..errors import FastLoRAError, RegimeWarning

POPULATION = schema.POPULATION

# Sweep keys are the options of make_problem / retrain / evaluate declared in fastlora.options
# (one schema: types, ranges and defaults agree with the Python API and the CLI).
KEYS: dict[str, schema.Option] = schema.spec_keys()
PROBLEM_KEYS = tuple(k for k in schema.PROBLEM if k in KEYS)
RETRAIN_KEYS = tuple(k for k in schema.RETRAIN if k in KEYS and k != "seed")
OPTION_KEYS = tuple(k for k in schema.SOLVER if k in KEYS)
EVALUATE_KEYS = tuple(k for k in schema.EVALUATE if k in KEYS)
LANDSCAPE_KEYS = tuple(k for k in schema.LANDSCAPE if k in KEYS)
DATASET_KEYS = tuple(k for k in schema.DATASET if k in KEYS)
# problem keys a dataset point may carry (its data fix the others): the learner
DATASET_PROBLEM_KEYS = ("model",)
# make_problem's own keys a generator plugin (law = "...") need not take: not recorded by default there
LAW_FREE_KEYS = ("symmetric",)
# problem keys that change how data are drawn, not what is drawn: rows that differ only in them
# share their seed (the two samplers draw the same ground truth from it)
SEED_NEUTRAL = ("sampler",)
# the keys check_options reads
_OPTION_CHECK_KEYS = frozenset((*OPTION_KEYS, *LANDSCAPE_KEYS, "method", "solver", "peft", "peft_options", "model",
                                "dataset", "n", "law", "law_options", "ft_peft", "ft_peft_options"))
# every row records these (the schema's defaults where the spec is silent), so stored rows are self-describing
RECORDED = ("d", "k", "T", "n", "noise", "symmetric", "n_test_tasks", "method", "peft", "solver", "backend", "dtype",
            "n_ft", "ft_peft")
DEFAULTS = {key: (POPULATION if KEYS[key].kind == "count" and KEYS[key].default is None
                  else KEYS[key].default_for("lora-ml")) for key in RECORDED}
TOP_LEVEL = {"name", "repeats", "seed", "grid", "fixed", "description", "pairing"}
# the keys that shape the ground truth (A*, task factors, test tasks): under pairing "paired" they
# and the repeat alone seed it (docs/pairing.md)
TRUTH_KEYS = ("d", "d_out", "k", "T", "model", "symmetric", "n_test_tasks", "task_ranks", "task_scales")
PAIRED, PER_POINT, FRESH = "paired", "per-point", "fresh:"
DEFAULT_PAIRING = PAIRED
LEGACY_PAIRING = PER_POINT  # stores written before pairing existed
# problem keys added with the task laws, and the value that draws the paper's law: at that value they
# leave seeds as they were
LAW_DEFAULTS = {"input_law": "gaussian", "input_df": None, "input_cov": "identity", "noise_law": "gaussian",
                "noise_df": None, "task_ranks": None, "task_scales": None}
# keys every row records, filled per point where the spec is silent (module docstring)
FILLED_CONSTANTS = {"sampler": "raw", "input_law": "gaussian", "input_cov": "identity", "noise_law": "gaussian"}
FILLED_PER_POINT = ("rank", "ft_rank", "restarts")
# recorded defaults that depend on the point's model (the shallow network's peft is the paper's
# asymmetric 'lora', its n_ft the paper's 100): filled per point in specs with shallow points,
# recorded as DEFAULTS otherwise.  A filled value equal to DEFAULTS' still enters the row key, so
# such a point keeps the key it had when DEFAULTS were recorded for every point
FILLED_PER_MODEL = ("peft", "n_ft")
# memory of one row of Spec.rows() (its dict, row key and seed; measured ~370 B) plus the driver's
# bookkeeping of it, with headroom: the budget a spec's rows are checked against before any work
ROW_BYTES = 1024
# the most rows one spec may hold, whatever the memory: listing and checking them against a
# store takes ~4 µs a row, so beyond this a sweep would sit silent for minutes before any work
MAX_ROWS = 10_000_000


@dataclass(frozen=True)
class Spec:
    name: str
    repeats: int
    grids: list[dict]
    fixed: dict
    seed: int = 0
    description: str = ""
    source: str = field(default="", compare=False)
    pairing: str | None = None  # as the spec names it (None: the store's rule, or DEFAULT_PAIRING)
    filled: tuple = ()  # keys filled per point where the spec is silent (FILLED_CONSTANTS, FILLED_PER_POINT)

    @property
    def keys(self) -> list[str]:
        """Every key a row records, in a stable order (grid keys first)."""
        grid_keys = list(self.grids[0])
        return grid_keys + sorted({*self.fixed, *self.filled} - set(grid_keys))

    def points(self) -> list[dict]:
        """The distinct grid points (dicts over ``keys``, filled keys included), in spec order."""
        seen, out = set(), []
        for grid in self.grids:
            names = list(grid)
            for values in itertools.product(*(grid[k] for k in names)):
                point = {**self.fixed, **dict(zip(names, values))}
                key = canonical(point)
                if key not in seen:
                    seen.add(key)
                    out.append(fill_point(point, self.filled))
        return out

    def rows(self, pairing: str | None = None) -> list[dict]:
        """Every (point, repeat) with its derived seeds and unique key; ``pairing`` (default: the
        spec's, else ``DEFAULT_PAIRING``) decides ``truth_seed`` (module docstring).  Row keys do not
        depend on it: a store keeps one rule for all its rows."""
        rule = check_pairing(pairing or self.pairing or DEFAULT_PAIRING)
        out = []
        for point in self.points():
            point_text, problem_text = self._point_text(point), canonical(_seed_keys(point))  # once per point
            # a dataset's split and a generator plugin's draw come from one seed: nothing to pair
            truth_text = None if rule == PER_POINT or point.get("dataset") is not None \
                or point.get("law") is not None else canonical(_truth_keys(point, rule))
            for repeat in range(self.repeats):
                seed = _seed_of(self.seed, problem_text, repeat)
                truth_seed = seed if truth_text is None else _seed_of(self.seed, truth_text, repeat, role="truth")
                out.append({"point": point, "repeat": repeat, "seed": seed, "truth_seed": truth_seed,
                            "pairing": rule, "row_key": _row_key_of(point_text, repeat, self.seed)})
        return out

    def row_keys(self) -> list[str]:
        """The row keys of :meth:`rows`, in its order, without the rows' seeds."""
        return [_row_key_of(self._point_text(point), repeat, self.seed)
                for point in self.points() for repeat in range(self.repeats)]

    def _point_text(self, point: dict) -> str:
        """What a row key hashes of its point: the keys the spec declared (a value filled per model
        that equals DEFAULTS' stays, as in stores recorded before it was filled)."""
        filled = self.filled
        return _hashed_text({k: v for k, v in point.items()
                             if k not in filled or (k in FILLED_PER_MODEL and v == DEFAULTS[k])})

    def values(self, key: str) -> list:
        """The distinct values ``key`` takes over the spec's points, in spec order (without listing them)."""
        if key in self.fixed:
            return [self.fixed[key]]
        found: list = []
        for grid in self.grids:
            found.extend(v for v in grid.get(key, ()) if v not in found)
        return found

    def digest(self) -> str:
        text = json.dumps({"keys": self.keys, "seed": self.seed}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def canonical(point: dict) -> str:
    return json.dumps(point, sort_keys=True, separators=(",", ":"))


def retraining_key(point: dict) -> str:
    """What fixes a row's retraining, apart from its seed: the point without its evaluation keys.
    Rows that share it and their seed retrain the same model (only fine-tuning differs)."""
    return canonical({k: v for k, v in point.items() if k not in EVALUATE_KEYS})


# row keys hash the spelling that stores were first written with, so renaming an option
# (DEPRECATED_NAMES) leaves every stored row found by a resume: current -> stored spelling
_STORED_SPELLING = {new: old for old, new in schema.DEPRECATED_NAMES.items()}


def _hashed_text(point: dict) -> str:
    if not any(key in point for key in _STORED_SPELLING):
        return canonical(point)
    return canonical({_STORED_SPELLING.get(k, k): v for k, v in point.items()})


def _row_key_of(point_text: str, repeat: int, base_seed: int) -> str:
    return hashlib.sha256(f"{point_text}|{repeat}|{base_seed}".encode()).hexdigest()


def _seed_keys(point: dict) -> dict:
    return {k: point[k] for k in (*PROBLEM_KEYS, *DATASET_KEYS)
            if k in point and k not in SEED_NEUTRAL and not _at_law_default(point, k)}


def _at_law_default(point: dict, key: str) -> bool:
    """A task-law key at the value that draws the paper's law (it leaves seeds as before it existed)."""
    return key in LAW_DEFAULTS and point[key] == LAW_DEFAULTS[key]


def _truth_keys(point: dict, rule: str) -> dict:
    """The keys that seed the ground truth under ``rule`` (``TRUTH_KEYS``, plus a fresh: rule's keys)."""
    extra = rule[len(FRESH):].split(",") if rule.startswith(FRESH) else []
    return {k: point[k] for k in (*TRUTH_KEYS, *extra) if k in point and not _at_law_default(point, k)}


def _seed_of(base_seed: int, problem_text: str, repeat: int, role: str = "seed") -> int:
    """The seed of a row: a hash of the base seed, the *problem* keys (``_seed_keys``) and the repeat.
    Points that differ only in method, solver, peft or fine-tuning keys share their seed, so they
    are compared on the same draws of tasks and data (common random numbers).  ``role="truth"``:
    the truth seed of pairing (its keys: ``_truth_keys``)."""
    digest = hashlib.sha256(f"{role}|{base_seed}|{problem_text}|{repeat}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def check_pairing(rule) -> str:
    """A pairing rule: "paired", "per-point" or "fresh:KEY[,KEY...]" with problem keys."""
    if not isinstance(rule, str):
        raise FastLoRAError(f"pairing must be a string ('paired', 'per-point' or 'fresh:n'), got {rule!r}")
    rule = rule.strip()
    if rule in (PAIRED, PER_POINT):
        return rule
    if rule.startswith(FRESH):
        keys = [k.strip() for k in rule[len(FRESH):].split(",")]
        wrong = [k for k in keys if k not in PROBLEM_KEYS or k in TRUTH_KEYS]
        if not keys or wrong or len(set(keys)) != len(keys):
            allowed = ", ".join(k for k in PROBLEM_KEYS if k not in TRUTH_KEYS)
            raise FastLoRAError(f"pairing={rule!r}: after 'fresh:' name problem keys that do not already shape the "
                                f"truth, once each, e.g. 'fresh:n' (allowed: {allowed})")
        return FRESH + ",".join(keys)
    raise FastLoRAError(f"pairing={rule!r} must be 'paired' (one truth per repeat across the grid; the default), "
                        f"'per-point' (a fresh truth at every point: stores before pairing) or 'fresh:KEYS' (paired, "
                        f"but a fresh truth per value of those problem keys, e.g. 'fresh:n')")


def fill_point(point: dict, filled) -> dict:
    """``point`` with the keys ``filled`` set to what a row resolves them to (module docstring)."""
    if not filled:
        return point
    for key, value in FILLED_CONSTANTS.items():
        if key in filled:
            point[key] = value
    for name in ("input_df", "noise_df"):
        if name in filled:
            law = point.get(name.replace("_df", "_law"))
            point[name] = 5.0 if law == "student-t" else None
    if "rank" in filled:
        point["rank"] = point.get("k", KEYS["k"].default) if point.get("dataset") is None else 1
    if "ft_rank" in filled:
        point["ft_rank"] = resolved_ft_rank(point)
    if "restarts" in filled:
        point["restarts"] = schema.OPTIONS["restarts"].default_for(point.get("method", "lora-ml"), _model_of(point))
    for key in FILLED_PER_MODEL:
        if key in filled:
            value = schema.OPTIONS[key].default_for(model=_model_of(point))
            point[key] = POPULATION if value is None and KEYS[key].kind == "count" else value
    return point


def resolved_ft_rank(point: dict) -> int:
    """The fine-tuning rank evaluate uses when ``ft_rank`` is not given: k; the retrained rank where
    fine-tuning keeps LoRA-ML's shared parameters (fastlora.metrics); the shallow network's the
    paper's rule (3k at T = 2, fastlora.shallow.paper_ft_rank); a dataset's its protocol k (1)."""
    if point.get("dataset") is not None:
        return 1
    k = point.get("k", KEYS["k"].default)
    if _model_of(point) == "shallow":
        from ..shallow.evaluate import paper_ft_rank
        return min(paper_ft_rank(k, point.get("T", KEYS["T"].default)), point["d"])
    if point.get("method", "lora-ml") == "lora-ml" and _keeps_shared(point):
        return point.get("rank") or k
    return k


def _keeps_shared(point: dict) -> bool:
    """Whether fine-tuning keeps the retrained shared parameters (a parameterization of protocol v2
    whose shared parameters the fine-tuning parameterization also has)."""
    from ..peft.protocol import shared_names
    try:
        retrained = shared_names(_peft_of(point))
        ft_name = point.get("ft_peft", schema.OPTIONS["ft_peft"].default)
        finetuned = retrained if ft_name == point.get("peft") else shared_names(_registered(ft_name))
    except FastLoRAError:
        return False  # refused when the point is checked
    return bool(retrained) and bool(finetuned) and set(finetuned) <= set(retrained)


def load_spec(path) -> Spec:
    """The spec in the file at ``path``: UTF-8 text (TOML's encoding; a leading byte-order mark is allowed)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FastLoRAError(f"spec file {str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FastLoRAError(f"spec file {str(path)!r} is not UTF-8 text (TOML's encoding): byte "
                            f"0x{data[exc.start]:02x} at offset {exc.start} is not valid UTF-8; save the file as "
                            f"UTF-8") from None
    return parse_spec(text, origin=str(path))


def parse_spec(text: str, origin: str = "<spec>", *, check_points: bool = True) -> Spec:
    """The spec in ``text``, every key and value checked; ``check_points=False`` skips the checks of
    each point's combination of options and sizes (for specs a store recorded: their rows exist)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FastLoRAError(f"{origin} is not valid TOML: {exc}") from None
    unknown = set(raw) - TOP_LEVEL
    if unknown:
        raise FastLoRAError(f"{origin}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                            f"allowed: {', '.join(sorted(TOP_LEVEL))}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise FastLoRAError(f"{origin}: 'name' must be a non-empty string")
    repeats = raw.get("repeats", 1)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise FastLoRAError(f"{origin}: 'repeats' must be an integer >= 1, got {repeats!r}")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FastLoRAError(f"{origin}: 'seed' must be an integer >= 0, got {seed!r}")
    fixed = raw.get("fixed", {})
    if not isinstance(fixed, dict):
        raise FastLoRAError(f"{origin}: [fixed] must be a table of scalars")
    fixed = _current_spelling(fixed, origin)
    grids = raw.get("grid")
    if grids is None:
        raise FastLoRAError(f"{origin}: a [grid] table is required (each key a list of values)")
    grids = [grids] if isinstance(grids, dict) else grids
    if not isinstance(grids, list) or not grids or not all(isinstance(g, dict) for g in grids):
        raise FastLoRAError(f"{origin}: [grid] must be a table (or [[grid]] an array of tables)")
    grids = [_current_spelling(grid, origin) for grid in grids]
    first_keys = set(grids[0])
    for i, grid in enumerate(grids):
        if not grid:
            raise FastLoRAError(f"{origin}: grid table {i} is empty")
        if set(grid) != first_keys:
            raise FastLoRAError(f"{origin}: every [[grid]] table must have the same keys; table {i} has "
                                f"{sorted(grid)}, table 0 has {sorted(first_keys)}")
        for key, values in grid.items():
            _check_known(key, origin)
            if not isinstance(values, list) or not values:
                raise FastLoRAError(f"{origin}: grid key {key!r} must be a non-empty list of values, got {values!r}")
            grid[key] = [check_value(key, v, origin) for v in values]
            repeated = next((v for i, v in enumerate(grid[key]) if v in grid[key][:i]), None)
            if repeated is not None:
                raise FastLoRAError(f"{origin}: grid key {key!r} lists {repeated!r} more than once; list each value "
                                    f"once (more seeds per point: 'repeats')")
    _check_row_count(grids, repeats, origin)
    both = first_keys & set(fixed)
    if both:
        raise FastLoRAError(f"{origin}: key(s) {', '.join(sorted(both))} appear in both [grid] and [fixed]")
    for key, value in list(fixed.items()):
        _check_known(key, origin)
        tables_allowed = KEYS[key].kind == "table"
        lists_allowed = KEYS[key].kind in ("int_list", "float_list")
        if (isinstance(value, list) and not lists_allowed) or (isinstance(value, dict) and not tables_allowed):
            raise FastLoRAError(f"{origin}: fixed key {key!r} must be a scalar, got {value!r}")
        fixed[key] = check_value(key, value, origin)
    pairing = raw.get("pairing")
    if pairing is not None:
        try:
            pairing = check_pairing(pairing)
        except FastLoRAError as exc:
            raise FastLoRAError(f"{origin}: {exc}") from None
    uses_dataset = "dataset" in first_keys or "dataset" in fixed
    _check_dataset_keys(uses_dataset, first_keys | set(fixed), origin)
    # make every row carry every default, so stored rows are self-describing (a dataset's own
    # problem keys are fixed by its data, not by make_problem's defaults)
    uses_law = "law" in first_keys or "law" in fixed
    per_model = _has_shallow_points(grids, fixed, uses_dataset)
    for key, value in DEFAULTS.items():
        if (uses_dataset and key in PROBLEM_KEYS) or (uses_law and key in LAW_FREE_KEYS) or \
                (per_model and key in FILLED_PER_MODEL):
            continue
        if key not in first_keys and key not in fixed:
            fixed[key] = value
    spec = Spec(name=name.strip(), repeats=repeats, grids=grids, fixed=fixed, seed=seed,
                description=str(raw.get("description", "")), source=text, pairing=pairing,
                filled=_filled_keys(grids, fixed, uses_dataset, per_model))
    if not check_points:
        return spec
    # the option checks depend on a few keys only: check each combination of their grid values once
    varying = [k for k in first_keys if k in _OPTION_CHECK_KEYS]
    checked: set[tuple] = set()
    for point in spec.points():
        combination = tuple(repr(point.get(k)) for k in varying)
        if combination not in checked:
            checked.add(combination)
            check_options(point, origin)
        check_point(point, origin)
    warn_outside_regime(spec, origin)
    return spec


def _has_shallow_points(grids: list[dict], fixed: dict, uses_dataset: bool) -> bool:
    """Whether a point of the spec may be the shallow network's (a dataset's, or model = "shallow")."""
    models = [fixed["model"]] if "model" in fixed else [v for g in grids for v in g.get("model", ())]
    return uses_dataset or "shallow" in models


def _filled_keys(grids: list[dict], fixed: dict, uses_dataset: bool, per_model: bool = False) -> tuple:
    """The keys a row resolves where the spec is silent (module docstring): ``FILLED_CONSTANTS``
    (not for datasets, whose data fix the problem), input_df / noise_df where a student-t law
    is used, ``FILLED_PER_POINT``, and ``FILLED_PER_MODEL`` where a point may be the shallow
    network's (whose defaults differ, fastlora.options)."""
    declared = set(grids[0]) | set(fixed)
    candidates = [] if uses_dataset else list(FILLED_CONSTANTS)
    for name in ("input_df", "noise_df"):
        law = name.replace("_df", "_law")
        values = [fixed[law]] if law in fixed else [v for g in grids for v in g.get(law, ())]
        if "student-t" in values:
            candidates.append(name)
    candidates += list(FILLED_PER_POINT)
    if per_model:
        candidates += list(FILLED_PER_MODEL)
    return tuple(k for k in candidates if k not in declared)


# the most points a regime warning lists one by one
REGIME_SHOWN = 8


def warn_outside_regime(spec: Spec, origin: str) -> None:
    """One :class:`RegimeWarning` naming, point by point, those outside the theorem's regime
    (fastlora.regime); their rows carry ``in_regime = 0`` and the reasons in ``regime_note``."""
    from ..regime import point_regime
    described: dict[str, str] = {}
    for point in spec.points():
        inside, note = point_regime(point)
        if inside is False:
            keys = ("d", "d_out", "k", "T", "task_ranks") + (("rank", "peft") if point.get("method") == "lora-ml"
                                                              else ())
            where = ", ".join(f"{k}={point[k]}" for k in keys if point.get(k) is not None)
            described.setdefault(f"{point.get('method', 'lora-ml')} at {where}", note)
    if not described:
        return
    import warnings
    lines = [f"  {where}: {note}" for where, note in list(described.items())[:REGIME_SHOWN]]
    if len(described) > REGIME_SHOWN:
        lines.append(f"  ... and {len(described) - REGIME_SHOWN} more")
    warnings.warn(f"{origin}: {len(described)} point(s) lie outside the theorem's regime of exact recovery (their "
                  f"rows carry in_regime = 0 and the reason in regime_note; docs/identifiability.md):\n"
                  + "\n".join(lines), RegimeWarning, stacklevel=3)


def _current_spelling(table: dict, origin: str) -> dict:
    """``table`` with deprecated key spellings (fastlora.options.DEPRECATED_NAMES) renamed, warning once each."""
    out = {}
    for key, value in table.items():
        new = schema.current_name(key, origin, stacklevel=5)
        if new in out or (new != key and new in table):
            raise FastLoRAError(f"{origin}: {key!r} and {new!r} are one key (the first its old spelling); keep {new!r}")
        out[new] = value
    return out


def _check_row_count(grids: list[dict], repeats: int, origin: str) -> None:
    """Refuse a spec whose rows could not even be listed in memory, before listing them."""
    import math

    from ..config import require_memory
    points = sum(math.prod(len(values) for values in grid.values()) for grid in grids)
    rows = points * repeats
    what = f"{origin}: {rows:,} rows ({points:,} grid point(s) x {repeats:,} repeats)"
    advice = "use fewer repeats or grid values, or split the spec into several sweeps"
    if rows > MAX_ROWS:
        raise FastLoRAError(f"{what} is more than one spec may hold ({MAX_ROWS:,}); {advice}")
    require_memory(rows * ROW_BYTES, what, advice)


def _check_known(key: str, origin: str) -> None:
    if key in TOP_LEVEL - {"grid", "fixed"}:  # e.g. seed under [fixed]: say where it goes
        raise FastLoRAError(f"{origin}: {key!r} is a top-level key of the spec (before any [table]), not a "
                            f"point's key")
    if key not in KEYS:
        raise FastLoRAError(f"{origin}: unknown key {key!r}; allowed keys: {', '.join(sorted(KEYS))}")


def check_value(key: str, value, origin: str):
    """``value`` of spec key ``key``, checked by the option schema (TOML types: no arrays, no None)."""
    _check_known(key, origin)
    option = KEYS[key]
    if option.kind == "count" and value == POPULATION:
        return value
    if option.kind in ("peft", "law"):  # a registered name
        if option.kind == "peft":
            from .. import peft as registry
            what, none = "parameterization", ""
        else:
            from .. import generators as registry
            what, none = "problem generator", "none installed (entry-point group fastlora.problems)"
        names = registry.available()
        if value not in names:
            raise FastLoRAError(f"{origin}: {key}={value!r} is not a registered {what}; available: "
                                f"{', '.join(names) or none}")
        return value
    if option.kind == "table":
        if not isinstance(value, dict):
            raise FastLoRAError(f"{origin}: {key} must be a table, e.g. {key} = {{ alpha = 16 }}, got {value!r}")
        return value
    if option.kind in ("int_list", "float_list") and not isinstance(value, list):
        value = [value]  # one value for every task
    if option.kind == "init_A" and not isinstance(value, str):
        raise FastLoRAError(f"{origin}: {key} must be one of {', '.join(map(repr, option.choices))} in a spec")
    try:
        checked = option.check(value)
    except FastLoRAError as exc:
        raise FastLoRAError(f"{origin}: {exc}") from None
    if checked is None and option.kind != "count":
        raise FastLoRAError(f"{origin}: {key} must be {option.describe()}, got {value!r}")
    return checked


def _check_dataset_keys(uses_dataset: bool, keys: set, origin: str) -> None:
    """A dataset spec takes no problem keys of make_problem's law; dataset keys need a dataset."""
    if uses_dataset:
        fixed_by_data = sorted(k for k in keys if k in PROBLEM_KEYS and k not in DATASET_PROBLEM_KEYS)
        if fixed_by_data:
            raise FastLoRAError(f"{origin}: key(s) {', '.join(fixed_by_data)} do not apply with 'dataset': the "
                                f"dataset fixes d, T and n (set the adapter rank with rank / ft_rank)")
        if "n_starts" in keys:
            raise FastLoRAError(f"{origin}: n_starts (a landscape census) does not apply with 'dataset'")
        return
    protocol = sorted(k for k in keys if k in DATASET_KEYS)
    if protocol:
        raise FastLoRAError(f"{origin}: key(s) {', '.join(protocol)} apply only to a spec with a 'dataset' key, "
                            f"e.g. dataset = \"digits\"")


def check_point(point: dict, origin: str) -> None:
    """Combinations of shapes that no single key can rule out (rank > d, ...)."""
    if point.get("dataset") is not None:
        _check_dataset_point(point, origin)
        return
    d = point["d"]
    d_out = point.get("d_out") or d
    smallest = min(d, d_out)
    where = ", ".join(f"{k}={point[k]}" for k in ("d", "d_out", "k", "rank", "ft_rank", "T") if k in point)
    for key in ("k", "rank", "ft_rank"):
        if key in point and point[key] > smallest:
            raise FastLoRAError(f"{origin}: {key}={point[key]} is impossible with min(d, d_out)={smallest} ({where})")
    law = point.get("law")
    if point.get("symmetric", True) and d_out != d and law is None:
        raise FastLoRAError(f"{origin}: symmetric=true needs d_out == d ({where}); set symmetric = false")
    if point.get("method") == "lora-ml" and point.get("peft") == "lora_sym" and d_out != d:
        raise FastLoRAError(f"{origin}: peft='lora_sym' needs d_out == d ({where})")
    if point.get("n_test_tasks") == 0:
        raise FastLoRAError(f"{origin}: n_test_tasks=0 leaves nothing to evaluate: every sweep row is fine-tuned and "
                            f"measured on held-out test tasks; use n_test_tasks >= 1 ({where})")
    _check_task_law(point, d, d_out, origin)
    if point.get("model") != "shallow":
        _check_parameterization_shapes(point, d, d_out, where, origin)
        if law is None:  # make_problem's own law (a generator plugin's sizes are its own)
            _check_sizes(point, d, d_out, origin)
    if point.get("model") == "shallow":
        # a grid crossing model with population values needs splitting: one [[grid]] table per model
        split = " (a spec of both models can give the shallow points their own [[grid]] table)"
        if point.get("n", POPULATION) == POPULATION:
            raise FastLoRAError(f"{origin}: model='shallow' needs a finite n (the paper: n = 1000) ({where}, "
                                f"n='population'); the shallow network has no population mode{split}")
        linear_only = [key for key in ("rank_tol", "noise_floor") if key in point]
        if linear_only:
            raise FastLoRAError(f"{origin}: {' and '.join(linear_only)} (the linear model's adaptation-rank options) "
                                f"do not apply to model='shallow' ({where}){split}")
        if point.get("n_ft", 100) in (POPULATION, None):
            raise FastLoRAError(f"{origin}: model='shallow' fine-tunes on a number of samples (the paper: n_ft = 100) "
                                f"({where}, n_ft='population'); the shallow network has no population mode{split}")
        if point.get("solver") == "als":
            raise FastLoRAError(f"{origin}: model='shallow' has no ALS (no closed-form steps); use solver 'auto' "
                                f"or 'gd'")
        if point.get("sampler", "raw") != "raw" or point.get("d_out") not in (None, d) or point.get("implicit"):
            raise FastLoRAError(f"{origin}: model='shallow' takes raw samples of a square network: no sampler, "
                                f"d_out or implicit keys")


def _check_task_law(point: dict, d: int, d_out: int, origin: str) -> None:
    """The task-law keys as make_problem checks them (fastlora.laws): a law the sampler cannot draw,
    a covariance in population mode, per-task lists longer than T or ranks above min(d, d_out)."""
    if all(point.get(k) == v for k, v in LAW_DEFAULTS.items()):
        return
    from ..problems import task_law_arguments
    n = None if point.get("n", POPULATION) == POPULATION else point["n"]
    T = point.get("T", KEYS["T"].default)
    where = ", ".join(f"{k}={point[k]}" for k in ("d", "T", "n", *LAW_DEFAULTS, "sampler")
                      if point.get(k) is not None and not _at_law_default(point, k))
    try:
        if point.get("model") == "shallow" and (point.get("input_law", "gaussian") != "gaussian"
                                                or point.get("input_cov", "identity") != "identity"
                                                or point.get("task_scales") is not None):
            raise FastLoRAError("model='shallow' draws x ~ N(0, I) and Δ*_t = U*_t U*_tᵀ: input_law, input_cov and "
                                "task_scales do not apply (noise_law and task_ranks do)")
        laws = task_law_arguments(d, point.get("k", KEYS["k"].default), T, n, point.get("sampler", "raw"),
                                   point.get("input_law", "gaussian"), point.get("input_df"),
                                   point.get("input_cov"), point.get("noise_law", "gaussian"),
                                   point.get("noise_df"), point.get("task_ranks"), point.get("task_scales"), None,
                                   False)
        ranks = laws["task_ranks"]
        if ranks is not None and max(ranks) > min(d, d_out):
            raise FastLoRAError(f"task_ranks={list(point['task_ranks'])}: every rank must be <= min(d, d_out)="
                                f"{min(d, d_out)}")
    except FastLoRAError as exc:
        raise FastLoRAError(f"{origin}: {exc} ({where})") from None


def _check_parameterization_shapes(point: dict, d: int, d_out: int, where: str, origin: str) -> None:
    """The shapes LoRA-ML's and fine-tuning's parameterizations take (``check_shape_supported``,
    as ``fl.retrain`` and ``fl.evaluate`` check them)."""
    from ..peft.protocol import check_shape_supported
    try:
        if point.get("method", schema.OPTIONS["method"].default) == "lora-ml":
            check_shape_supported(_peft_of(point, origin), d_out, d)
    except FastLoRAError as exc:
        raise FastLoRAError(f"{origin}: {exc} ({where})") from None
    ft_peft = point.get("ft_peft", schema.OPTIONS["ft_peft"].default)
    try:
        ft_options = point.get("ft_peft_options")
        check_shape_supported(_registered(ft_peft) if ft_options is None else _finetuning_peft(point, origin), d_out, d)
    except FastLoRAError as exc:
        raise FastLoRAError(f"{origin}: ft_peft: {exc} ({where})") from None


def _finetuning_peft(point: dict, origin: str):
    """The point's fine-tuning parameterization built with its ``ft_peft_options``."""
    from .. import peft as peft_registry
    return peft_registry.get(point.get("ft_peft", schema.OPTIONS["ft_peft"].default), **point["ft_peft_options"])


@functools.lru_cache(maxsize=64)
def _registered(name: str):
    from .. import peft as peft_registry
    return peft_registry.get(name)


def _check_sizes(point: dict, d: int, d_out: int, origin: str) -> None:
    """Sizes make_problem or fl.retrain would refuse on this machine (memory, raw draws), by their own checks."""
    from ..problems import check_size
    from ..sizing import check_solve_size
    n = None if point.get("n", POPULATION) == POPULATION else point["n"]
    k, T = point.get("k", KEYS["k"].default), point.get("T", KEYS["T"].default)
    try:
        check_size(d, d_out, k, T, n, point.get("noise", 0.0), point.get("n_test_tasks", KEYS["n_test_tasks"].default),
                   point.get("symmetric", True), point.get("sampler", "raw"), offer_implicit=False)
        check_solve_size(T, d_out, d, k, point.get("rank"), n is None, point.get("dtype", "float64"))
    except FastLoRAError as exc:
        raise FastLoRAError(f"{origin}: {exc}") from None


def check_options(point: dict, origin: str) -> None:
    """What ``fl.retrain`` and the landscape census would refuse for this point's options (a
    solver option its method or solver does not take, ``peft_options`` its parameterization does
    not take, a census the landscape tools cannot run), decided by the functions they use: the
    option schema (fastlora.options), the registry's constructor of the parameterization, and the
    landscape tools' own parameterization check.  Reads only ``_OPTION_CHECK_KEYS``."""
    method = point.get("method", schema.OPTIONS["method"].default)
    _check_law(point, origin)
    _check_finetuning_options(point, method, origin)
    if _model_of(point) == "shallow":  # its gradient solvers take other options: checked when run
        if method == "lora-ml" and point.get("peft_options"):
            _peft_of(point, origin)
        _check_census(point, method, origin)
        return
    options = {k: point[k] for k in OPTION_KEYS if k in point}
    solver = point.get("solver", schema.OPTIONS["solver"].default) if method == "lora-ml" else None
    # solver="auto" runs one of the LoRA-ML solvers: one of them must take every option given
    candidates = ("als", "gd") if solver == "auto" else (solver,)
    refusals = []
    for candidate in candidates:
        try:
            schema.check_solver_options(method, candidate, options)
            break
        except FastLoRAError as exc:
            refusals.append(str(exc))
    else:
        if solver == "auto":
            given = ("all of " if len(options) > 1 else "") + ", ".join(sorted(options))
            raise FastLoRAError(f"{origin}: solver='auto' runs 'als' or 'gd', and neither takes {given}: "
                                f"{'; '.join(refusals)}")
        raise FastLoRAError(f"{origin}: {refusals[0]}")
    runs_als = solver == "als" or (solver == "auto" and "adapter_step" in point)  # auto: adapter_step means ALS
    if method == "lora-ml" and (point.get("peft_options") or runs_als):
        parameterization = _peft_of(point, origin)
        if runs_als:
            from ..solvers.adapters import check_adapter_step_possible, check_als_supported
            mode = point.get("adapter_step", "auto")
            try:
                check_als_supported(parameterization, mode)
                if point.get("dataset") is None and _model_of(point) == "linear":
                    check_adapter_step_possible(parameterization, mode, point.get("n", POPULATION) == POPULATION)
            except FastLoRAError as exc:
                raise FastLoRAError(f"{origin}: {exc}") from None
    _check_census(point, method, origin)


def _check_law(point: dict, origin: str) -> None:
    """The law's options are options its generator takes (``law_options`` needs a ``law``)."""
    if point.get("law") is None:
        if point.get("law_options"):
            raise FastLoRAError(f"{origin}: law_options applies only with a law (a problem-generator plugin), e.g. "
                                f"law = \"tied\"")
        return
    from .. import generators
    given = {k: point[k] for k in generators.OPTIONAL_ARGUMENTS if k in point}
    try:
        generators.check_law_options(point["law"], point.get("law_options") or {}, given)
    except FastLoRAError as exc:
        raise FastLoRAError(f"{origin}: {exc}") from None


def _check_finetuning_options(point: dict, method: str, origin: str) -> None:
    """``ft_peft_options`` its class takes, and, where fine-tuning by name keeps the retrained
    instance, no mismatch with the retrained options (as ``fl.evaluate`` decides it)."""
    ft_options = point.get("ft_peft_options")
    if ft_options is None:
        return
    from .. import peft as peft_registry
    from ..peft.registry import finetuning_parameterization
    ft_peft = point.get("ft_peft", schema.OPTIONS["ft_peft"].default)
    try:
        peft_registry.get(ft_peft, **ft_options)
    except FastLoRAError as exc:
        raise FastLoRAError(f"{origin}: ft_peft_options={ft_options!r} for ft_peft={ft_peft!r}: {exc}") from None
    retrained = _peft_of(point, origin) if method == "lora-ml" else None
    try:
        finetuning_parameterization(ft_peft, ft_options, retrained, "ft_peft")
    except FastLoRAError as exc:
        raise FastLoRAError(f"{origin}: {exc}") from None


def _peft_of(point: dict, origin: str = "<spec>"):
    """The point's parameterization, built with its ``peft_options`` as ``fl.retrain`` builds it."""
    from .. import peft as peft_registry
    name = point.get("peft", schema.OPTIONS["peft"].default_for(model=_model_of(point)))
    try:
        return peft_registry.get(name, **(point.get("peft_options") or {}))
    except ValueError as exc:  # FastLoRAError, or a plugin's own ValueError
        raise FastLoRAError(f"{origin}: peft_options={point['peft_options']!r} for peft={name!r}: {exc}") from None


def _check_census(point: dict, method: str, origin: str) -> None:
    """A census (``n_starts``) is of the linear LoRA-ML objective, with a parameterization the
    landscape tools support; its other keys need it."""
    if point.get("n_starts") is None:
        unused = sorted(k for k in LANDSCAPE_KEYS if k != "n_starts" and k in point)
        if unused:
            raise FastLoRAError(f"{origin}: {', '.join(unused)} set(s) the starts of a landscape census; add "
                                f"n_starts (the number of starts) or leave {', '.join(unused)} out")
        return
    what = f"n_starts={point['n_starts']} (a landscape census of the LoRA-ML objective)"
    if method != "lora-ml":
        raise FastLoRAError(f"{origin}: {what} applies to method='lora-ml' only, not method={method!r}")
    if _model_of(point) != "linear":
        raise FastLoRAError(f"{origin}: {what} applies to the linear model only; the landscape tools have no "
                            f"model={_model_of(point)!r}")
    from ..landscape.objective import resolve_peft
    try:
        resolve_peft(_peft_of(point, origin))
    except FastLoRAError as exc:
        raise FastLoRAError(f"{origin}: {what}: {exc}") from None


def _model_of(point: dict) -> str:
    """The point's learner: a dataset point's is the shallow network unless it says otherwise."""
    return point.get("model", "shallow" if point.get("dataset") else "linear")


def _check_dataset_point(point: dict, origin: str) -> None:
    """A dataset point: the shallow network on the dataset's d features (square, no ALS)."""
    from ..datasets import dataset_width
    if point.get("model", "shallow") != "shallow":
        raise FastLoRAError(f"{origin}: dataset={point['dataset']!r} is learned by the shallow network; "
                            f"model={point['model']!r} is not available for it (leave model out)")
    d = dataset_width(point["dataset"])
    for key in ("rank", "ft_rank"):
        if point.get(key) is not None and point[key] > d:
            raise FastLoRAError(f"{origin}: {key}={point[key]} is impossible with the {d} features of "
                                f"dataset={point['dataset']!r}")
    if point.get("solver") == "als":
        raise FastLoRAError(f"{origin}: dataset={point['dataset']!r} is learned by the shallow network, which has "
                            f"no ALS (no closed-form steps); use solver 'auto' or 'gd'")
    n_ft = point.get("n_ft", POPULATION)
    if n_ft != POPULATION:
        available = _dataset_fine_tuning_samples(point["dataset"], point.get("test_fraction"))
        if n_ft > available:
            raise FastLoRAError(f"{origin}: n_ft={n_ft} is more than the {available} samples of the training part of "
                                f"dataset={point['dataset']!r}'s test task; fine-tuning draws n_ft samples from it "
                                f"without replacement")


@functools.lru_cache(maxsize=16)
def _dataset_fine_tuning_samples(name: str, test_fraction: float | None) -> int:
    """Samples a test task of dataset ``name`` offers for fine-tuning (its split's sizes do not depend on the seed)."""
    from ..datasets import load
    protocol = {} if test_fraction is None else {"test_fraction": test_fraction}
    return min(task.n for task in load(name, seed=0, **protocol).test_tasks)


def problem_args(point: dict, seed: int, truth_seed: int | None = None) -> dict:
    """Keyword arguments of ``make_problem`` for a row: the truth drawn from ``truth_seed`` (default
    ``seed``), samples and noise from ``seed`` (pairing, module docstring)."""
    args = {k: point[k] for k in PROBLEM_KEYS if k in point}
    args["n"] = None if args.get("n", POPULATION) == POPULATION else args["n"]
    args.update(args.pop("law_options", None) or {})  # a generator plugin's own keyword options
    if truth_seed is None or truth_seed == seed:
        return {**args, "seed": seed}
    return {**args, "seed": truth_seed, "sample_seed": seed}


def dataset_args(point: dict, seed: int) -> dict | None:
    """Keyword arguments of ``fastlora.datasets.load`` for a point with a ``dataset`` (None without:
    the point's problem comes from ``make_problem(**problem_args(point, seed))``)."""
    if point.get("dataset") is None:
        return None
    args = {k: point[k] for k in DATASET_KEYS if k in point and k != "dataset"}
    args.update({k: point[k] for k in DATASET_PROBLEM_KEYS if k in point})
    return {"name": point["dataset"], **args, "seed": seed}


def retrain_args(point: dict) -> dict:
    """Keyword arguments of ``fl.retrain`` for a point (the seed aside): every option it carries (a checked spec
    holds none its method and solver refuse; ``fl.retrain`` refuses any other, never ignores it).
    Every row records ``peft``, ``rank`` and ``solver``; they reach LoRA-ML only."""
    method = point.get("method", schema.OPTIONS["method"].default)
    args = {k: point[k] for k in RETRAIN_KEYS if k in point}
    if method != "lora-ml":
        for k in ("peft", "rank", "solver"):
            args.pop(k, None)
    args.update({k: point[k] for k in OPTION_KEYS if k in point})
    return args


def landscape_args(point: dict, seed: int) -> dict | None:
    """Keyword arguments of ``fastlora.landscape.landscape_metrics`` for a point with
    ``n_starts`` (None without: no census)."""
    if point.get("n_starts") is None:
        return None
    return {"n_starts": point["n_starts"], "init": point.get("census_init", "normal"),
            "init_scale": point.get("init_scale", schema.OPTIONS["init_scale"].default), "seed": seed,
            "peft": _peft_of(point), "rank": point.get("rank"), "solver": point.get("solver", "auto"),
            "optimizer": point.get("optimizer"), "backend": point.get("backend", "auto")}


def evaluate_args(point: dict) -> dict:
    """Keyword arguments of ``fl.evaluate`` for a point (the seed aside)."""
    args = {k: point[k] for k in EVALUATE_KEYS if k in point}
    if "n_ft" in args:
        args["n_ft"] = None if args["n_ft"] == POPULATION else args["n_ft"]
    return args
