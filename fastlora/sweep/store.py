"""The SQLite results store: one row per finished (point, seed).

A writer (``ResultsStore(path, spec)``, the sweep driver) holds an exclusive lock on the
sidecar file ``<store>.lock`` (``fcntl.flock``: the kernel drops it when the driver dies,
even by SIGKILL), so two sweeps never write one store at once.  It runs the database in
WAL mode with ``synchronous=FULL`` and commits finished rows in small batches, one
transaction each: a batch whose commit returned survives Ctrl-C, SIGKILL and power loss.
``row_key`` (a hash of the point, repeat and base seed) is UNIQUE, so a resumed or
duplicated run can never store a row twice.  On close the writer switches the file back
to a rollback journal, so a finished store is one self-contained file.

A reader (``ResultsStore(path)``, used by export, plot, load_results and the demo) opens
the database read-only through the URI ``file:...?mode=ro``: no pragma, no folder, no
write.  On read-only media where SQLite cannot create the ``-shm`` file of a WAL store
it falls back to ``immutable=1``.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import socket
import sqlite3
import time
import warnings
from collections import Counter
from pathlib import Path

from ..errors import FastLoRAError, StoreConflictError, check_choice, check_output_folder
from ..options import DEPRECATED_NAMES
from .spec import DEFAULT_PAIRING, KEYS, LEGACY_PAIRING, Spec, parse_spec

METRICS = ("rel_err_A", "adapt_rank", "excess_risk", "objective", "n_iter", "seconds", "converged",
           # whether every test task's fine-tuning converged (fastlora.evaluate; NULL where not reported)
           "ft_converged",
           # models without ground-truth excess risk (fastlora.shallow, real data)
           "test_loss", "test_accuracy",
           # a landscape census per row (n_starts)
           "spurious_fraction", "saddle_fraction", "global_fraction", "min_hessian_eig",
           # identifiability (fastlora.identify) and restarts (how many starts reached the kept objective)
           "identified", "restarts_reached", "global_identified_fraction", "global_unidentified_fraction")
# what actually ran: the backend "auto" resolved to and the solver the method chose; why A was (not)
# identified; whether the point lies in the theorem's regime (fastlora.regime); the pairing rule and the
# seed of the ground truth (sweep.spec)
RUN_COLUMNS = ("backend_used", "solver_used", "identification", "in_regime", "regime_note", "truth_seed", "pairing")
META_COLUMNS = ("id", "row_key", "sweep", "repeat", "seed")
TAIL_COLUMNS = ("status", "error", "finished_at", "host")
_SQL_TYPES = {"rel_err_A": "REAL", "adapt_rank": "REAL", "excess_risk": "REAL", "objective": "REAL",
              "n_iter": "INTEGER", "seconds": "REAL", "converged": "INTEGER", "ft_converged": "INTEGER",
              "backend_used": "TEXT", "solver_used": "TEXT", "test_loss": "REAL", "test_accuracy": "REAL",
              "spurious_fraction": "REAL", "saddle_fraction": "REAL", "global_fraction": "REAL",
              "min_hessian_eig": "REAL",
              "identified": "INTEGER", "restarts_reached": "INTEGER", "global_identified_fraction": "REAL",
              "global_unidentified_fraction": "REAL", "identification": "TEXT", "in_regime": "INTEGER",
              "regime_note": "TEXT", "truth_seed": "INTEGER", "pairing": "TEXT"}
# what stores written before a key was recorded drew where it was silent: old rows get these values
# when the column is added (rank, ft_rank, restarts stay NULL there: not recorded)
_BACKFILL = {"sampler": "raw", "input_law": "gaussian", "input_cov": "identity", "noise_law": "gaussian"}
# SQLite errors that mean "cannot open read-only here" (e.g. a WAL store on read-only media)
_CANNOT_OPEN = {sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY}
# PRAGMA application_id of a store ("FLRS"); stores written before it was set have 0
APPLICATION_ID = 0x464C5253
# columns every store's results table has (what tells a store from another database's results table)
_STORE_COLUMNS = {"row_key", "sweep", "status", "error"}


class ResultsStore:
    """A results database.  ``ResultsStore(path)`` opens it read-only; ``ResultsStore(path, spec)``
    opens it for writing the rows of ``spec`` (created if missing; several specs may share a
    store if their keys agree), holding the store's writer lock until :meth:`close`."""

    def __init__(self, path, spec: Spec | None = None):
        self.path = Path(path)
        self.readonly = spec is None
        self._lock = None
        if self.readonly:
            self.db = _connect_readonly(self.path)
            try:
                if not self._has_results():
                    raise EmptyStoreError(f"{str(self.path)!r} holds no 'results' table (not a fastlora results "
                                          f"store)")
                check_integrity(self.db, self.path)
            except BaseException:
                self.db.close()
                raise
            return
        check_output_folder(self.path, f"out={str(self.path)!r}")
        self._lock = WriterLock(self.path, spec.name)
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            if self._has_results():
                check_integrity(self.db, self.path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self._ensure_schema(spec)
        except sqlite3.DatabaseError as exc:
            self._lock.release()
            raise FastLoRAError(f"{str(self.path)!r} is not a usable SQLite results store: {exc}") from None
        except BaseException:
            self._lock.release()
            raise

    def _has_results(self) -> bool:
        """Whether this is a store (False: an empty database); another kind of database is refused."""
        try:
            tables = sorted(name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'"))
            app_id = self.db.execute("PRAGMA application_id").fetchone()[0]
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(results)")}
        except sqlite3.DatabaseError as exc:
            raise FastLoRAError(f"{str(self.path)!r} is not a usable SQLite results store: {exc}") from None
        if not tables and app_id in (0, APPLICATION_ID):
            return False
        if app_id not in (0, APPLICATION_ID) or not _STORE_COLUMNS <= columns:
            held = f"table(s) {', '.join(tables)}" if tables else f"application id {app_id:#x}"
            raise FastLoRAError(f"{str(self.path)!r} is an SQLite database of another program ({held}), not a "
                                f"fastlora results store; use another file")
        return True

    def _ensure_schema(self, spec: Spec) -> None:
        keys = spec.keys
        recorded = (*METRICS, *RUN_COLUMNS)
        if self._has_results():
            existing = set(self.columns())
            for old, new in _renames(existing, keys):  # a store written before an option was renamed
                self.db.execute(f'ALTER TABLE results RENAME COLUMN "{old}" TO "{new}"')
            existing = set(self.columns())
            for name in sorted(self._keys_to_add(spec, existing)):
                self.db.execute(f'ALTER TABLE results ADD COLUMN "{name}"')
                if name in _BACKFILL:
                    self.db.execute(f'UPDATE results SET "{name}" = ?', (_BACKFILL[name],))
            # a store written by an older fastlora lacks newer metric columns: add them (NULL in old rows)
            for name in (c for c in recorded if c not in existing):
                self.db.execute(f'ALTER TABLE results ADD COLUMN "{name}" {_SQL_TYPES[name]}')
            return
        key_cols = ", ".join(f'"{k}"' for k in keys)
        metric_cols = ", ".join(f'"{m}" {_SQL_TYPES[m]}' for m in recorded)
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        self.db.execute(f"""CREATE TABLE IF NOT EXISTS results (
            id INTEGER PRIMARY KEY, row_key TEXT NOT NULL UNIQUE, sweep TEXT, "repeat" INTEGER, seed INTEGER,
            {key_cols}, {metric_cols}, status TEXT NOT NULL, error TEXT, finished_at TEXT, host TEXT)""")
        self.db.execute("CREATE TABLE IF NOT EXISTS specs (name TEXT, digest TEXT, source TEXT, added_at TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('pairing', ?)", (spec.pairing or DEFAULT_PAIRING,))
        self.db.execute("COMMIT")

    def pairing(self) -> str:
        """The pairing rule this store's rows were made with (sweep.spec): recorded when the store was
        created; a store written before pairing existed drew a fresh truth per point (``LEGACY_PAIRING``)."""
        return recorded_pairing(self.db)

    def _keys_to_add(self, spec: Spec, existing: set) -> set:
        """Keys a row of ``spec`` resolves where the spec is silent (Spec.filled) that this store, with columns
        ``existing``, lacks (an older store: they are added); a store of other keys is refused."""
        stored_keys = existing - {*METRICS, *RUN_COLUMNS, *META_COLUMNS, *TAIL_COLUMNS}
        recordable = set(spec.filled) - stored_keys
        if stored_keys != set(spec.keys) - recordable:
            extra, missing = sorted(stored_keys - set(spec.keys)), sorted(set(spec.keys) - stored_keys - recordable)
            differ = "; ".join(f"{where}: {', '.join(keys)}" for where, keys in
                               (("keys only the store has", extra), ("keys only the spec has", missing)) if keys)
            raise StoreConflictError(f"{str(self.path)!r} was written by a sweep with other keys ({differ}); one store "
                                     f"holds sweeps of the same keys: use another --out")
        return recordable

    def check_run(self, spec: Spec, rows: list[dict], stored: dict[str, tuple[str, str]], append: bool = False):
        """What running ``spec`` into this store would refuse, checked without writing (``fastlora sweep
        --dry-run``): other keys, another pairing rule and, unless ``append``, :meth:`check_spec`'s cases."""
        existing = set(self.columns())
        renamed = dict(_renames(existing, spec.keys))  # as opening it for the run would rename them
        self._keys_to_add(spec, {renamed.get(name, name) for name in existing})
        self._check_pairing(spec)
        if not append:
            self.check_spec(spec, rows, stored)

    def _check_pairing(self, spec: Spec) -> str:
        rule = self.pairing()
        if spec.pairing is not None and spec.pairing != rule:
            raise StoreConflictError(f"{str(self.path)!r} was made with pairing {rule!r} and this spec names "
                                     f"pairing {spec.pairing!r}: the rows of one store share one rule; use another "
                                     f"--out (or remove the spec's pairing key to resume with {rule!r})")
        return rule

    def adopt_pairing(self, spec: Spec) -> str:
        """The rule this run uses: the store's (module docstring of sweep.spec); a spec naming
        another is refused, since one store's rows share one rule."""
        rule = self._check_pairing(spec)
        if not _has_meta(self.db):  # an old store: record its rule, so that it is explicit from now on
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('pairing', ?)", (rule,))
        return rule

    def remember_spec(self, spec: Spec) -> None:
        known = self.db.execute("SELECT 1 FROM specs WHERE name=? AND source=?", (spec.name, spec.source)).fetchone()
        if not known:
            self.db.execute("INSERT INTO specs VALUES (?, ?, ?, ?)", (spec.name, spec.digest(), spec.source, _now()))

    def check_spec(self, spec: Spec, rows: list[dict], stored: dict[str, tuple[str, str]]) -> None:
        """Refuse to mix results (``--append`` skips this check).

        Refused, unless this very spec ran into the store before (a resume): rows stored under
        ``spec.name`` that ``spec`` no longer produces (the spec changed; the message names the
        changed keys), and rows of ``spec`` stored under another sweep's name (a renamed spec).
        A spec that only adds rows (more repeats, more grid values) resumes.
        ``stored``: row_key -> (sweep, status), from :meth:`stored_rows`.
        """
        versions = self._stored_versions(spec.name)
        if any(isinstance(v, Spec) and not spec_changes(v, spec) for v in versions):
            return
        wanted = {r["row_key"] for r in rows}
        stale = sum(1 for key, (sweep, _) in stored.items() if sweep == spec.name and key not in wanted)
        if stale:
            prune = f"fastlora store prune {self.path} --sweep {spec.name} --spec-version {max(len(versions), 1)}"
            raise StoreConflictError(f"{str(self.path)!r} holds {stale} row(s) of sweep {spec.name!r} that this spec "
                                     f"no longer produces ({_describe_change(versions, spec)}); pass --append to add "
                                     f"this spec's rows beside them, drop the old version's rows with: {prune} "
                                     f"(versions: fastlora store info {self.path}), or use another --out")
        others = Counter(sweep for key, (sweep, _) in stored.items() if key in wanted and sweep != spec.name)
        if others:
            held = ", ".join(f"{n} by sweep {name!r}" for name, n in sorted(others.items(), key=str))
            raise StoreConflictError(f"{str(self.path)!r} already holds rows of spec {spec.name!r} under another "
                                     f"name ({held}); rerun it under that name, use another --out, or pass --append "
                                     f"to reuse those rows")

    def _stored_versions(self, name: str) -> list[Spec | FastLoRAError]:
        """Every spec recorded here under ``name``, oldest first (the error where one no longer parses)."""
        versions = []
        for (source,) in self.db.execute("SELECT source FROM specs WHERE name=? ORDER BY rowid", (name,)):
            versions.append(_stored_spec(source, name))
        return versions

    def columns(self) -> list[str]:
        return [row[1] for row in self.db.execute("PRAGMA table_info(results)")]

    def declared_types(self) -> dict[str, str]:
        """column -> its declared SQL type (REAL, INTEGER, TEXT; "" for the untyped key columns)."""
        return {DEPRECATED_NAMES.get(row[1], row[1]): row[2] for row in self.db.execute("PRAGMA table_info(results)")}

    def stored_rows(self) -> dict[str, tuple[str, str]]:
        """row_key -> (sweep, status) of every stored row (equal pairs share one tuple: stores hold millions)."""
        pairs: dict[tuple[str, str], tuple[str, str]] = {}
        rows = self.db.execute("SELECT row_key, sweep, status FROM results")
        return {key: pairs.setdefault((sweep, status), (sweep, status)) for key, sweep, status in rows}

    def errors(self) -> dict[str, str]:
        """row_key -> error message of every row stored with status='error'."""
        return dict(self.db.execute("SELECT row_key, error FROM results WHERE status='error' ORDER BY id"))

    def drop_errors(self, keys) -> int:
        keys = list(keys)
        self.db.execute("BEGIN IMMEDIATE")
        n = 0
        for key in keys:
            n += self.db.execute("DELETE FROM results WHERE row_key=? AND status='error'", (key,)).rowcount
        self.db.execute("COMMIT")
        return n

    def add_rows(self, spec: Spec, finished: list[tuple[dict, dict]]) -> list[bool]:
        """Commit finished (row, outcome) pairs in one transaction (one prepared insert for all);
        per pair, whether it was stored (False: it was already there — never a duplicate)."""
        if not finished:
            return []
        spec_keys = spec.keys
        columns = ("row_key", "sweep", "repeat", "seed", *spec_keys, *METRICS, *RUN_COLUMNS, "status", "error",
                   "finished_at", "host")
        quoted = ", ".join('"' + c + '"' for c in columns)
        sql = (f"INSERT OR IGNORE INTO results ({quoted}) "
               f"VALUES ({', '.join('?' for _ in columns)})")
        now, host = _now(), socket.gethostname()
        keys = [row["row_key"] for row, _ in finished]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            present = self._present(keys)
            stored, values = [], []
            for (row, outcome), key in zip(finished, keys):
                new = key not in present
                present.add(key)
                stored.append(new)
                if new:
                    point, recorded = row["point"], {**row, **outcome}  # the outcome's value, else the row's
                    values.append((key, spec.name, row["repeat"], row["seed"],
                                   *(_sql_value(point.get(k)) for k in spec_keys),
                                   *(_sql_value(recorded.get(m)) for m in (*METRICS, *RUN_COLUMNS)),
                                   outcome["status"], outcome.get("error"), now, outcome.get("host") or host))
            self.db.executemany(sql, values)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return stored

    def _present(self, keys: list[str]) -> set:
        """The row keys among ``keys`` already stored."""
        found = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            found.update(k for (k,) in self.db.execute(
                f"SELECT row_key FROM results WHERE row_key IN ({', '.join('?' for _ in chunk)})", chunk))
        return found

    def rows(self) -> tuple[list[str], list[tuple]]:
        try:
            cur = self.db.execute("SELECT * FROM results ORDER BY id")
            return [DEPRECATED_NAMES.get(d[0], d[0]) for d in cur.description], cur.fetchall()
        except sqlite3.DatabaseError as exc:
            raise FastLoRAError(f"results store {str(self.path)!r} cannot be read: {exc}") from None

    def close(self) -> None:
        if not self.readonly:
            try:
                # a finished store becomes one self-contained file that read-only media can serve;
                # skipped (busy) while a reader has it open
                self.db.execute("PRAGMA busy_timeout=50")
                self.db.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.OperationalError:
                pass
        self.db.close()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class WriterLock:
    """An exclusive ``flock`` on ``<store>.lock``, naming its holder (sweep, pid, host) in the file.

    The kernel releases it when the holding process exits or is killed, so a killed driver
    never blocks a resume.  The file sits beside the real store (symlinks resolved) and
    stays (deleting a lock file races with its next user).  Without ``fcntl`` (not POSIX)
    nothing is locked.
    """

    def __init__(self, store: Path, sweep: str):
        self.fd: int | None = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        self.path = _lock_path(store)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise FastLoRAError(f"cannot create the lock file {str(self.path)!r}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(os.read(fd, 4096))
            os.close(fd)
            raise _busy(store, holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"sweep": sweep, "pid": os.getpid(), "host": socket.gethostname(),
                                 "since": _now()}).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    @staticmethod
    def check_free(store: Path) -> None:
        """What taking the lock for a run would refuse — the store or its folder not writable, another sweep
        holding it — checked without taking it or creating any file (``sweep --dry-run``)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        path = _lock_path(store)
        for target in (path.parent, path, Path(os.path.realpath(store))):
            if target.exists() and not os.access(target, os.W_OK):
                raise FastLoRAError(f"{str(target)!r} is not writable here: a run into {str(store)!r} needs to write "
                                    f"the store and its lock file beside it")
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while a run holds it exclusively
        except BlockingIOError:
            raise _busy(store, _describe_holder(os.read(fd, 4096))) from None
        finally:
            os.close(fd)


def _lock_path(store) -> Path:
    """``<store>.lock`` beside the real store (symlinks resolved)."""
    real = Path(os.path.realpath(store))
    return real.with_name(real.name + ".lock")


def _busy(store, holder: str) -> FastLoRAError:
    return FastLoRAError(f"{str(store)!r} is being written by another sweep ({holder}); wait for it to finish or "
                         f"stop it, or use another --out")


def _describe_holder(raw: bytes) -> str:
    try:
        info = json.loads(raw)
        return f"sweep {info['sweep']!r}, pid {info['pid']} on host {info['host']}, since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not named itself yet"


def _describe_change(versions: list, spec: Spec) -> str:
    """What changed since the latest stored version of a spec, e.g. ``noise: 0.01 -> 0.05``."""
    if not versions:
        return "the spec they were computed with is not recorded"
    latest = versions[-1]
    if isinstance(latest, FastLoRAError):
        return f"the stored spec cannot be compared: {latest}"
    return "; ".join(spec_changes(latest, spec)) or "no key differs: fastlora's defaults changed"


def spec_changes(before: Spec, after: Spec) -> list[str]:
    """The keys whose values differ between two specs, as ``key: old -> new`` (``-``: absent)."""
    def flat(spec: Spec) -> dict:
        out = {"repeats": spec.repeats, "seed": spec.seed, **spec.fixed}
        for i, grid in enumerate(spec.grids):
            prefix = f"grid {i} " if len(spec.grids) > 1 else ""
            out.update({f"{prefix}{key}": values for key, values in grid.items()})
        return out

    def shown(values: dict, key: str) -> str:
        return repr(values[key]) if key in values else "-"

    old, new = flat(before), flat(after)
    return [f"{key}: {shown(old, key)} -> {shown(new, key)}" for key in sorted(set(old) | set(new))
            if shown(old, key) != shown(new, key)]


def _has_meta(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is not None


def recorded_pairing(db: sqlite3.Connection) -> str:
    """The pairing rule a store records, ``LEGACY_PAIRING`` for a store written before pairing existed."""
    if not _has_meta(db):
        return LEGACY_PAIRING
    found = db.execute("SELECT value FROM meta WHERE key='pairing'").fetchone()
    return LEGACY_PAIRING if found is None else found[0]


def store_pairing(path) -> str | None:
    """The pairing rule of the store at ``path`` (read-only), None where there is no store yet."""
    if not Path(path).is_file():
        return None
    with ResultsStore(path) as store:
        return store.pairing()


def _connect_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise FastLoRAError(f"results store {str(path)!r} does not exist")
    uri = path.resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60)
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return db
    except sqlite3.OperationalError as exc:
        if not _cannot_open(exc):
            raise FastLoRAError(f"results store {str(path)!r} cannot be read: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise FastLoRAError(f"{str(path)!r} is not a usable SQLite results store: {exc}") from None
    # a WAL store on read-only media: SQLite cannot create the -shm index, so read the file as
    # immutable (no locks); rows a killed writer left in its -wal file are then not seen
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        warnings.warn(f"{str(path)!r} is on read-only storage and its -wal file holds rows not yet merged into "
                      f"the database; they are not shown (open the store once on writable storage to merge them)",
                      stacklevel=3)
    try:
        db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return db
    except sqlite3.DatabaseError as exc:
        raise FastLoRAError(f"results store {str(path)!r} cannot be read: {exc}") from None


def _stored_spec(source: str, name: str) -> Spec | FastLoRAError:
    """A spec the store recorded (its points ran already: they are not checked again), or the error
    that keeps it from being read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # spelled as that fastlora did
            return parse_spec(source, origin=f"the stored spec {name!r}", check_points=False)
    except FastLoRAError as exc:
        return exc


def _open_for_maintenance(path: Path, what: str) -> tuple[sqlite3.Connection, WriterLock]:
    """A writable connection to the existing store at ``path``, checked, and its writer lock."""
    if not path.is_file():
        raise FastLoRAError(f"results store {str(path)!r} does not exist")
    lock = WriterLock(path, what)
    try:
        db = sqlite3.connect(path, timeout=60, isolation_level=None)
    except sqlite3.DatabaseError as exc:
        lock.release()
        raise FastLoRAError(f"{str(path)!r} is not a usable SQLite results store: {exc}") from None
    try:
        store = ResultsStore.__new__(ResultsStore)
        store.path, store.db = path, db
        if not store._has_results():
            raise FastLoRAError(f"{str(path)!r} holds no 'results' table (not a fastlora results store)")
        check_integrity(db, path)
    except BaseException:
        db.close()
        lock.release()
        raise
    return db, lock


def _versions(db: sqlite3.Connection) -> dict[str, list[tuple[int, str, Spec | FastLoRAError]]]:
    """sweep name -> its recorded specs, oldest first: (rowid, added_at, spec or the error reading it)."""
    out: dict[str, list] = {}
    for rowid, name, source, added in db.execute("SELECT rowid, name, source, added_at FROM specs ORDER BY rowid"):
        out.setdefault(name, []).append((rowid, added, _stored_spec(source, name)))
    return out


def describe_store(path) -> list[dict]:
    """One dict per sweep of the store and spec version (numbered from 1, oldest first): ``sweep``,
    ``version``, ``added_at``, ``rows`` (rows of that version stored), ``errors`` (of them, failed);
    and per sweep a last entry with ``version`` None counting every row stored under its name."""
    with ResultsStore(path) as store:
        status = {}
        for key, sweep, state in store.db.execute("SELECT row_key, sweep, status FROM results"):
            status[(sweep, key)] = state
        versions = _versions(store.db)
    out = []
    for name in sorted({sweep for sweep, _ in status} | set(versions)):
        for number, (_, added, spec) in enumerate(versions.get(name, []), 1):
            entry = {"sweep": name, "version": number, "added_at": added, "rows": None, "errors": None}
            if isinstance(spec, Spec):
                found = [status.get((name, key)) for key in spec.row_keys()]
                entry.update(rows=sum(s is not None for s in found), errors=sum(s == "error" for s in found))
            out.append(entry)
        stored = [state for (sweep, _), state in status.items() if sweep == name]
        out.append({"sweep": name, "version": None, "added_at": None, "rows": len(stored),
                    "errors": sum(s == "error" for s in stored)})
    return out


def prune_store(path, *, errors: bool = False, spec_version: int | None = None, sweep: str | None = None) -> int:
    """Drop rows from a store; the number dropped.  ``errors``: rows stored with status='error';
    ``spec_version`` N: the rows that version N of the sweep's spec produces (``describe_store``
    numbers them) and its record, so that a changed spec runs without ``--append``.  ``sweep``:
    the sweep they belong to (needed with ``spec_version`` where the store holds several)."""
    path = Path(path)
    if not errors and spec_version is None:
        raise FastLoRAError("nothing to prune: pass --errors (rows that failed) and/or --spec-version N (the rows of "
                            "an old version of a spec)")
    if spec_version is not None and (isinstance(spec_version, bool) or not isinstance(spec_version, int)
                                     or spec_version < 1):
        raise FastLoRAError(f"spec_version={spec_version!r} must be a version number >= 1 (fastlora store info)")
    db, lock = _open_for_maintenance(path, "fastlora store prune")
    try:
        versions = _versions(db)
        names = sorted({n for (n,) in db.execute("SELECT DISTINCT sweep FROM results")} | set(versions))
        if sweep is not None and sweep not in names:
            raise FastLoRAError(f"sweep={sweep!r} is not in {str(path)!r}; it holds sweep(s) "
                                f"{', '.join(map(repr, names)) or 'none'}")
        if spec_version is not None and sweep is None:
            if len(versions) != 1:
                raise FastLoRAError(f"{str(path)!r} holds the specs of sweeps {', '.join(map(repr, sorted(versions)))}:"
                                    f" name one with --sweep")
            sweep = next(iter(versions))
        drop: list[str] = []
        record = None
        if spec_version is not None:
            known = versions.get(sweep, [])
            if spec_version > len(known):
                raise FastLoRAError(f"--spec-version {spec_version}: sweep {sweep!r} has {len(known)} recorded "
                                    f"version(s) in {str(path)!r} (fastlora store info {path})")
            record, _, spec = known[spec_version - 1]
            if not isinstance(spec, Spec):
                raise FastLoRAError(f"--spec-version {spec_version} of sweep {sweep!r} cannot be read ({spec}); drop "
                                    f"its failed rows with --errors, or use another store")
            drop = spec.row_keys()
        db.execute("BEGIN IMMEDIATE")
        try:
            dropped = 0
            where, args = ("", ()) if sweep is None else (" AND sweep=?", (sweep,))
            if errors:
                dropped += db.execute(f"DELETE FROM results WHERE status='error'{where}", args).rowcount
            if drop:
                db.execute("CREATE TEMP TABLE dropped_keys (row_key TEXT PRIMARY KEY)")
                db.executemany("INSERT OR IGNORE INTO dropped_keys VALUES (?)", ((k,) for k in drop))
                dropped += db.execute("DELETE FROM results WHERE sweep=? AND row_key IN (SELECT row_key FROM "
                                      "dropped_keys)", (sweep,)).rowcount
                db.execute("DROP TABLE dropped_keys")
            if record is not None:
                db.execute("DELETE FROM specs WHERE rowid=?", (record,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return dropped
    finally:
        db.close()
        lock.release()


def check_integrity(db: sqlite3.Connection, path: Path) -> None:
    """Refuse a damaged store, naming it: SQLite's ``PRAGMA quick_check`` (every page's structure,
    tables and indexes alike; one pass over the file, without the slower cross-checks of
    ``integrity_check``)."""
    try:
        found = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as exc:
        found = [str(exc)]
    if found != ["ok"]:
        first = " ".join(line.strip() for line in found[0].splitlines() if not line.startswith("***"))
        raise FastLoRAError(f"results store {str(path)!r} is damaged (SQLite's quick_check: {first}); restore it "
                            f"from a copy, or salvage its readable rows with: sqlite3 {path} .recover")


def _cannot_open(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return (code & 0xFF) in _CANNOT_OPEN  # the primary code of an extended one
    return "unable to open" in str(exc) or "readonly" in str(exc)


class EmptyStoreError(FastLoRAError):
    """An empty database opened to read as a store (a run would make it one)."""


def _renames(existing: set, keys) -> list[tuple[str, str]]:
    """(old, new) columns of a store written before an option was renamed, to rename for a spec of ``keys``."""
    return [(old, new) for old, new in DEPRECATED_NAMES.items() if old in existing and new in keys
            and new not in existing]


def _sql_value(value):
    kind = type(value)
    if kind is str or kind is int or value is None:  # the common cases first: one type test
        return value
    if kind is float:
        return None if value != value else value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def load_results(path, status: str | None = "ok"):
    """The ``results`` table as a pandas DataFrame (rows of ``status`` only; None: all rows)."""
    try:
        import pandas as pd
    except ImportError:
        raise FastLoRAError("load_results needs pandas: pip install 'fastlora[io]'") from None
    with ResultsStore(path) as store:
        columns, rows = store.rows()
    frame = pd.DataFrame.from_records(rows, columns=columns)
    if status is not None:
        frame = frame[frame["status"] == status].reset_index(drop=True)
    return frame


def export_results(path, out, fmt: str | None = None) -> int:
    """Write every row of the store to ``out`` — a file path, or an open text stream (CSV only) —
    as CSV or Parquet (``fmt``; default: from the file's extension, .parquet or else CSV); returns
    the row count."""
    stream = hasattr(out, "write")
    suffix = "" if stream else Path(out).suffix.lower().lstrip(".")
    if fmt is None:
        fmt = "parquet" if suffix == "parquet" else "csv"
    check_choice("format", fmt, ("csv", "parquet"))
    if suffix in ("csv", "parquet") and suffix != fmt:
        raise FastLoRAError(f"out={str(out)!r} has the extension .{suffix} but format is {fmt}; make them agree")
    if stream and fmt != "csv":
        raise FastLoRAError("a stream takes CSV only; write Parquet to a file, e.g. results.parquet")
    if not stream:
        check_output_folder(out, f"out={str(out)!r}")
    with ResultsStore(path) as store:
        columns, rows = store.rows()
        declared = store.declared_types()
    if fmt == "csv":
        with contextlib.nullcontext(out) if stream else open(out, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            writer.writerows(rows)
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise FastLoRAError("--format parquet needs pyarrow: pip install 'fastlora[io]'") from None
        data = {c: _parquet_column(pa, [r[i] for r in rows], declared.get(c)) for i, c in enumerate(columns)}
        pq.write_table(pa.table(data), out)
    return len(rows)


def _parquet_column(pa, values: list, declared: str | None):
    """Parquet columns have one type: a column SQLite declares REAL, INTEGER or TEXT gets that
    type even when every value is NULL; a key such as n that mixes integers and the word
    "population" is written as text."""
    sql_type = {"REAL": pa.float64(), "INTEGER": pa.int64(), "TEXT": pa.string()}.get((declared or "").upper())
    kinds = {type(v) for v in values if v is not None}
    if str in kinds and len(kinds) > 1:
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())
    if sql_type is not None and not (kinds - {int, float, str}) and (str not in kinds or sql_type == pa.string()):
        return pa.array(values, type=sql_type)
    return pa.array(values)


def key_columns(columns: list[str]) -> list[str]:
    return [c for c in columns if c in KEYS]
