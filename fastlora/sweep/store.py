"""The SQLite results store: one row per finished (point, seed), committed at once.

The database runs in WAL mode with ``synchronous=FULL``: a row whose commit returned
survives Ctrl-C, SIGKILL and power loss.  ``row_key`` (a hash of the point, repeat and
base seed) is UNIQUE, so a resumed or duplicated run can never store a row twice.
Only the driver process writes.
"""
from __future__ import annotations

import csv
import json
import math
import socket
import sqlite3
import time
from pathlib import Path

from ..errors import FastLoRAError
from .spec import KEYS, Spec

METRICS = ("rel_err_A", "adapt_rank", "excess_risk", "objective", "n_iter", "seconds", "converged")
META_COLUMNS = ("id", "row_key", "sweep", "repeat", "seed")
TAIL_COLUMNS = ("status", "error", "finished_at", "host")
_SQL_TYPES = {"rel_err_A": "REAL", "adapt_rank": "REAL", "excess_risk": "REAL", "objective": "REAL",
              "n_iter": "INTEGER", "seconds": "REAL", "converged": "INTEGER"}


class ResultsStore:
    """A results database for one spec's keys (several specs may share it if their keys agree)."""

    def __init__(self, path, spec: Spec | None = None):
        self.path = Path(path)
        if spec is None and not self.path.exists():
            raise FastLoRAError(f"results store {str(self.path)!r} does not exist")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as exc:
            raise FastLoRAError(f"{str(self.path)!r} is not a usable SQLite results store: {exc}") from None
        if spec is not None:
            self._ensure_schema(spec)
        elif not self._has_results():
            raise FastLoRAError(f"{str(self.path)!r} holds no 'results' table (not a fastlora results store)")

    def _has_results(self) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='results'").fetchone() is not None

    def _ensure_schema(self, spec: Spec) -> None:
        keys = spec.keys
        if self._has_results():
            existing = set(self.columns())
            wanted = set(keys) | set(METRICS) | set(META_COLUMNS) | set(TAIL_COLUMNS)
            if existing != wanted:
                extra, missing = sorted(existing - wanted), sorted(wanted - existing)
                raise FastLoRAError(f"{str(self.path)!r} was written by a sweep with other keys "
                                    f"(store only: {extra or '-'}; spec only: {missing or '-'}); use another --out")
            return
        key_cols = ", ".join(f'"{k}"' for k in keys)
        metric_cols = ", ".join(f'"{m}" {_SQL_TYPES[m]}' for m in METRICS)
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute(f"""CREATE TABLE IF NOT EXISTS results (
            id INTEGER PRIMARY KEY, row_key TEXT NOT NULL UNIQUE, sweep TEXT, "repeat" INTEGER, seed INTEGER,
            {key_cols}, {metric_cols}, status TEXT NOT NULL, error TEXT, finished_at TEXT, host TEXT)""")
        self.db.execute("CREATE TABLE IF NOT EXISTS specs (name TEXT, digest TEXT, source TEXT, added_at TEXT)")
        self.db.execute("COMMIT")

    def remember_spec(self, spec: Spec) -> None:
        known = self.db.execute("SELECT 1 FROM specs WHERE name=? AND source=?", (spec.name, spec.source)).fetchone()
        if not known:
            self.db.execute("INSERT INTO specs VALUES (?, ?, ?, ?)", (spec.name, spec.digest(), spec.source, _now()))

    def columns(self) -> list[str]:
        return [row[1] for row in self.db.execute("PRAGMA table_info(results)")]

    def finished_keys(self, include_errors: bool = True) -> set[str]:
        sql = "SELECT row_key FROM results" + ("" if include_errors else " WHERE status='ok'")
        return {r[0] for r in self.db.execute(sql)}

    def drop_errors(self, keys) -> int:
        keys = list(keys)
        self.db.execute("BEGIN IMMEDIATE")
        n = 0
        for key in keys:
            n += self.db.execute("DELETE FROM results WHERE row_key=? AND status='error'", (key,)).rowcount
        self.db.execute("COMMIT")
        return n

    def add(self, spec: Spec, row: dict, outcome: dict) -> bool:
        """Commit one finished row; False if it was already there (never a duplicate)."""
        values = {"row_key": row["row_key"], "sweep": spec.name, "repeat": row["repeat"], "seed": row["seed"]}
        values.update({k: _sql_value(row["point"].get(k)) for k in spec.keys})
        values.update({m: _sql_value(outcome.get(m)) for m in METRICS})
        values.update(status=outcome["status"], error=outcome.get("error"), finished_at=_now(),
                      host=outcome.get("host") or socket.gethostname())
        cols = ", ".join(f'"{c}"' for c in values)
        marks = ", ".join("?" for _ in values)
        cur = self.db.execute(f"INSERT OR IGNORE INTO results ({cols}) VALUES ({marks})", list(values.values()))
        return cur.rowcount == 1

    def rows(self) -> tuple[list[str], list[tuple]]:
        cur = self.db.execute("SELECT * FROM results ORDER BY id")
        return [d[0] for d in cur.description], cur.fetchall()

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _sql_value(value):
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


def export_results(path, out, fmt: str) -> int:
    """Write every row of the store to ``out`` as CSV or Parquet; returns the row count."""
    with ResultsStore(path) as store:
        columns, rows = store.rows()
    if fmt == "csv":
        with open(out, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            writer.writerows(rows)
    elif fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise FastLoRAError("--format parquet needs pyarrow: pip install 'fastlora[io]'") from None
        data = {c: _parquet_column([r[i] for r in rows]) for i, c in enumerate(columns)}
        pq.write_table(pa.table(data), out)
    else:
        raise FastLoRAError(f"format={fmt!r} is not allowed; choose 'csv' or 'parquet'")
    return len(rows)


def _parquet_column(values: list) -> list:
    """Parquet columns have one type: a key such as n that mixes integers and the word
    "population" is written as text."""
    kinds = {type(v) for v in values if v is not None}
    if str in kinds and len(kinds) > 1:
        return [None if v is None else str(v) for v in values]
    return values


def key_columns(columns: list[str]) -> list[str]:
    return [c for c in columns if c in KEYS]
