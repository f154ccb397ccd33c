"""The results store: one SQLite file per run directory, written row by row.

A run directory ``RUN_DIR`` holds ``RUN_DIR/results.sqlite``.  The run's
configuration (a JSON object: model, weights hash, dataset, defense, sigma, n,
alpha, tau, attack settings, seed, package versions, ...) is stored once, when
the store is created (built by :func:`robustbench_iqa.provenance.run_config`).  Results are rows of named tables (``guarantee``,
``audit``, ``stability``, ...; each a row schema of one study) keyed by

    (table, model, defense, sigma, image, extra)

with a UNIQUE constraint over the key, and a JSON payload.  ``image`` is the
input's identity: its name and a content hash of the image (and, for FR models,
of the reference), so two inputs with one name never share a row.  ``extra``
distinguishes rows of one input inside a table (an attack norm ``"l2=0.05"``, a
seed ``"seed=3"``, ``"n=500,seed=3"``); ``defense`` is ``"none"`` and ``sigma``
is ``0.0`` for undefended models.

Units of work (:class:`robustbench_iqa.studies.base.Unit`) are recorded in a
``units`` table in the same transaction as their rows: a unit is either wholly in
the store or not at all, and a resumed run skips the units already there,
whichever executor (in-process or Ray) wrote them.

Durability (as in the one-row-per-image, flushed log of locuslab/smoothing's
``certify.py``): every :meth:`ResultsStore.put` is its own transaction (or
:meth:`ResultsStore.put_many` one small batch) committed in WAL mode with
``synchronous=FULL``, so a process killed at any moment loses at most the row it
was writing, and SQLite's journal keeps the file consistent.  A resumed run asks
:meth:`ResultsStore.done` / :meth:`ResultsStore.done_keys` which keys exist and
skips them; writing an existing key again is ignored, never duplicated.

Every row carries a checksum, the SHA-256 of its key and payload text (:func:`row_checksum`),
and every unit records how many rows it wrote.  Opening a store checks both
(:meth:`ResultsStore.check_integrity`): a row whose payload or key was changed after it was
written (one digit edited by hand, a damaged page), or a unit whose rows were deleted, is an
:class:`InputError` naming those rows, so neither ``report`` nor ``--resume`` ever reads a changed
row as a result.  The checksum finds changes, not forgery: whoever can write the file can write
a matching checksum.  Stores of schema version 2 (rows without checksums) are read as they are,
with a note, and refused for ``--resume``.

Opening a run directory that already has results requires ``resume=True`` *and*
the same configuration; anything else raises :class:`InputError` naming the
keys that differ.  Writers hold the run directory's lock
(:class:`robustbench_iqa.runlock.RunLock`); an unwritable, full or corrupt store
is an :class:`InputError` naming the file and the cause, never a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_iqa.errors import InputError, ReproducibilityWarning
from robustbench_iqa.provenance import RUNTIME_KEY, canonical_config, config_diff, json_text
from robustbench_iqa.safe_cells import csv_frame

RESULTS_FILE = "results.sqlite"
SCHEMA_VERSION = 3
"""3: rows carry a checksum, units the number of rows they wrote.  2 (no checksums) is read only."""
READABLE_VERSIONS = (2, 3)
KEY_FIELDS = ("table", "model", "defense", "sigma", "image", "extra")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rows (
    id      INTEGER PRIMARY KEY,
    tbl     TEXT NOT NULL,
    model   TEXT NOT NULL,
    defense TEXT NOT NULL,
    sigma   REAL NOT NULL,
    image   TEXT NOT NULL,
    extra   TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL,
    unit    TEXT,
    checksum TEXT NOT NULL,
    UNIQUE (tbl, model, defense, sigma, image, extra)
);
CREATE INDEX IF NOT EXISTS rows_by_table ON rows (tbl, model, defense, sigma);
CREATE TABLE IF NOT EXISTS units (
    key      TEXT PRIMARY KEY,
    study    TEXT NOT NULL,
    info     TEXT NOT NULL,
    rows     INTEGER NOT NULL,
    seconds  REAL NOT NULL,
    worker   TEXT NOT NULL,
    finished REAL NOT NULL
);
"""


@dataclass(frozen=True)
class RowKey:
    """The identity of one result row; see the module docstring."""

    table: str
    model: str
    defense: str = "none"
    sigma: float = 0.0
    image: str = ""
    extra: str = ""

    def __post_init__(self) -> None:
        for name in ("table", "model", "defense", "image", "extra"):
            if not isinstance(getattr(self, name), str):
                raise InputError(f"row key field {name!r} must be a string, got {getattr(self, name)!r}")
        if not self.table or not self.model:
            raise InputError("row key needs a non-empty table and model")
        sigma = float(self.sigma)
        if not math.isfinite(sigma) or sigma < 0:
            raise InputError(f"row key sigma must be finite and >= 0, got {self.sigma!r}")
        # Canonical value so that 0.25 from a config and 0.25 from a CLI flag are one key.
        object.__setattr__(self, "sigma", float(f"{sigma:.12g}"))

    def astuple(self) -> tuple[str, str, str, float, str, str]:
        return (self.table, self.model, self.defense, self.sigma, self.image, self.extra)


def _identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a config that must match on resume: everything but ``runtime``."""
    return {k: v for k, v in config.items() if k != RUNTIME_KEY}


def _warn_runtime(stored: Mapping[str, Any], config: Mapping[str, Any], path: Path) -> None:
    old, new = stored.get(RUNTIME_KEY), config.get(RUNTIME_KEY)
    if old is None or new is None or old == new:
        return
    diffs = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                      if old.get(k) != new.get(k))
    warnings.warn(
        f"resuming {path} with other runtime settings ({diffs}): new rows equal an uninterrupted run's "
        f"to a tolerance (~1e-7), not bit for bit",
        ReproducibilityWarning, stacklevel=3,
    )


class ResultsStore:
    """Rows of one run, in ``RUN_DIR/results.sqlite``; use :meth:`open`."""

    def __init__(self, path: Path, conn: sqlite3.Connection, config: dict[str, Any],
                 version: int = SCHEMA_VERSION) -> None:
        self.path = path
        self._conn = conn
        self.config = config
        self.version = version
        """The store's schema version (2: rows without checksums, read only)."""

    # -- opening ---------------------------------------------------------
    @classmethod
    def open(
        cls,
        run_dir: str | Path,
        config: Mapping[str, Any] | None = None,
        *,
        resume: bool = False,
    ) -> ResultsStore:
        """Create or reopen the store of ``run_dir``.

        * no store yet: ``config`` is required; the store is created with it.
        * a store exists and ``config`` is None: reopened as is (for reading, reports).
        * a store exists and ``config`` is given: allowed only with ``resume=True``
          and a config equal to the stored one.

        Writers should hold the run directory's :class:`~robustbench_iqa.runlock.RunLock`.
        """
        run = Path(run_dir)
        path = run / RESULTS_FILE
        if run.exists() and not run.is_dir():
            raise InputError(f"run dir {run} is not a directory")
        if not path.exists() and config is None:
            raise InputError(f"no results store in {run} (expected {RESULTS_FILE})")
        new_dir, new_file = not run.exists(), not path.exists()
        if new_file:
            _make_writable_dir(run)
        try:
            conn = _connect(path)
        except BaseException:
            if new_file:
                _remove_store_files(path, remove_dir=new_dir)
            raise
        try:
            stored, version = _read_config(conn, path)
            if stored is None:  # new, or killed before its creation committed
                if config is None:
                    raise InputError(f"{path} is empty: no run configuration was ever written "
                                     f"(a run killed at its start); start over with --fresh")
                try:
                    return cls(path, conn, _initialize(conn, config, path), SCHEMA_VERSION)
                except BaseException:
                    conn.close()
                    if new_file:  # leave nothing half-created behind
                        _remove_store_files(path, remove_dir=new_dir)
                    raise
            if config is not None:
                diff = config_diff(_identity(stored), _identity(canonical_config(config)))
                if diff:
                    raise InputError(
                        f"{path} was created with a different configuration (differs in: "
                        f"{', '.join(diff)}); use a new run dir"
                    )
                if not resume:
                    raise InputError(f"{run} already holds results; pass --resume to continue that run")
                if version != SCHEMA_VERSION:
                    raise InputError(f"{path} was written by an earlier version of robustbench_iqa (schema "
                                     f"{version}: rows without checksums) and cannot be continued; `report` "
                                     f"still reads it; start over with --fresh")
                _warn_runtime(stored, canonical_config(config), path)
            store = cls(path, conn, stored, version)
            store.check_integrity()
        except BaseException:
            conn.close()
            raise
        return store

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------
    def put(self, key: RowKey, payload: Mapping[str, Any]) -> bool:
        """Write one row in its own transaction; False if the key was already there."""
        return self.put_many([(key, payload)]) == 1

    def put_many(self, rows: Iterable[tuple[RowKey, Mapping[str, Any]]], *, unit: str | None = None) -> int:
        """Write a small batch in one transaction; returns how many keys were new."""
        self._writable()
        records = [(*_record(k, p), unit) for k, p in rows]
        if not records:
            return 0
        with _transaction(self._conn, self.path):
            before = self._conn.total_changes
            self._insert(records)
            return self._conn.total_changes - before

    def _writable(self) -> None:
        if self.version != SCHEMA_VERSION:
            raise InputError(f"{self.path} has schema version {self.version} (rows without checksums): it is "
                             f"read only; start a new run with --fresh")

    def check_integrity(self) -> None:
        """Raise an InputError naming the rows changed since they were written (checksum mismatch)
        and the units whose rows are missing; nothing for a store of schema 2 (no checksums)."""
        if self.version < 3:
            return
        changed = [RowKey(*r[:6]) for r in self._query(
            "SELECT tbl, model, defense, sigma, image, extra, payload, checksum FROM rows ORDER BY id")
            if row_checksum(RowKey(*r[:6]), r[6]) != r[7]]
        if changed:
            shown = "; ".join(_key_text(k) for k in changed[:5])
            more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            raise InputError(f"{self.path}: {len(changed)} row(s) changed since they were written (checksum "
                             f"mismatch): {shown}{more}; the store was edited or damaged: its results cannot be "
                             f"trusted; start over with --fresh")
        short = self._query(
            "SELECT u.key, u.rows, (SELECT COUNT(*) FROM rows r WHERE r.unit = u.key) AS n FROM units u "
            "WHERE u.rows != (SELECT COUNT(*) FROM rows r WHERE r.unit = u.key) ORDER BY u.finished")
        if short:
            shown = "; ".join(f"{k} ({n} of {want} rows)" for k, want, n in short[:5])
            more = f" and {len(short) - 5} more" if len(short) > 5 else ""
            raise InputError(f"{self.path}: {len(short)} unit(s) lost rows since they were written: {shown}{more}; "
                             f"the store was edited or damaged: start over with --fresh")

    def put_unit(self, key: str, *, study: str, info: Mapping[str, Any],
                 rows: Iterable[tuple[RowKey, Mapping[str, Any]]], seconds: float, worker: str) -> int:
        """Write a unit of work's rows and its ``units`` record in one transaction.

        Returns how many rows were new.  A unit already recorded is left as it is (its
        rows are not written twice): the store holds every unit wholly or not at all.
        """
        self._writable()
        records = [(*_record(k, p), key) for k, p in rows]
        info_text = json_text(dict(info), f"info of unit {key}")
        with _transaction(self._conn, self.path):
            if self._query("SELECT 1 FROM units WHERE key=?", (key,)):
                return 0
            before = self._conn.total_changes
            self._insert(records)
            new = self._conn.total_changes - before
            if new != len(records):  # a row key of this unit was already stored: count what is its own
                new = int(self._query("SELECT COUNT(*) FROM rows WHERE unit=?", (key,))[0][0])
            self._conn.execute("INSERT INTO units VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (key, study, info_text, new, float(seconds), worker, time.time()))
            return new

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A read; a corrupt or unreadable file is an InputError naming it."""
        try:
            return list(self._conn.execute(sql, params))
        except sqlite3.Error as exc:
            raise InputError(_describe(self.path, exc)) from None

    def _insert(self, records: list[tuple[Any, ...]]) -> None:
        self._conn.executemany(
            "INSERT OR IGNORE INTO rows (tbl, model, defense, sigma, image, extra, payload, created, checksum, unit) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            records,
        )

    def put_meta(self, key: str, value: Any) -> None:
        """Store (or replace) a JSON value beside the configuration, e.g. the gate's verdict."""
        if key in ("config", "schema_version", "created"):
            raise InputError(f"meta key {key!r} is reserved")
        text = json_text(value, f"meta {key!r}")
        with _transaction(self._conn, self.path):
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, text))

    def get_meta(self, key: str) -> Any:
        """A value stored with :meth:`put_meta`, or None."""
        rows = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return None if not rows else json.loads(rows[0][0])

    # -- reading ---------------------------------------------------------
    def done(self, key: RowKey) -> bool:
        """Whether the row ``key`` exists (resume: skip it)."""
        return bool(self._query(
            "SELECT 1 FROM rows WHERE tbl=? AND model=? AND defense=? AND sigma=? AND image=? AND extra=?",
            key.astuple(),
        ))

    def done_units(self) -> set[str]:
        """Keys of the units of work already stored (resume: skip them)."""
        return {r[0] for r in self._query("SELECT key FROM units")}

    def units_frame(self) -> pd.DataFrame:
        """One row per stored unit: key, study, its info, row count, seconds, worker, finish time."""
        rows = [{"key": k, "study": st, **json.loads(info), "rows": n, "seconds": sec, "worker": w,
                 "finished": fin}
                for k, st, info, n, sec, w, fin in self._query(
                    "SELECT key, study, info, rows, seconds, worker, finished FROM units ORDER BY finished")]
        return pd.DataFrame(rows)

    def iter_rows_for(self, key: RowKey) -> Iterator[dict[str, Any]]:
        """The row of ``key`` (zero or one), as :meth:`iter_rows` gives it."""
        for r in self._query(
                "SELECT tbl, model, defense, sigma, image, extra, payload FROM rows WHERE tbl=? AND model=? "
                "AND defense=? AND sigma=? AND image=? AND extra=?", key.astuple()):
            yield _flat(r)

    def done_keys(self, table: str | None = None) -> set[RowKey]:
        """All keys present (of one table, or of all)."""
        return {RowKey(*r[:6]) for r in self._select(table)}

    def tables(self) -> list[str]:
        """Names of the tables that have at least one row, sorted."""
        return [r[0] for r in self._query("SELECT DISTINCT tbl FROM rows ORDER BY tbl")]

    def count(self, table: str | None = None) -> int:
        if table is None:
            return int(self._query("SELECT COUNT(*) FROM rows")[0][0])
        return int(self._query("SELECT COUNT(*) FROM rows WHERE tbl=?", (table,))[0][0])

    def iter_rows(self, table: str | None = None) -> Iterator[dict[str, Any]]:
        """Rows as flat dicts: key columns, then payload fields (key columns win on a name clash)."""
        for r in self._select(table):
            yield _flat(r)

    def frame(self, table: str, **filters: Any) -> pd.DataFrame:
        """One table's rows as a DataFrame (key columns + payload fields), in insertion order.

        ``filters`` select on key columns, e.g. ``frame("audit", model="default-nr")``.
        """
        bad = sorted(set(filters) - set(KEY_FIELDS))
        if bad:
            raise InputError(f"can only filter on key columns {KEY_FIELDS}, not {bad}")
        df = pd.DataFrame(list(self.iter_rows(table)))
        if df.empty:
            return pd.DataFrame(columns=list(KEY_FIELDS))
        for k, v in filters.items():
            df = df[df[k] == (float(v) if k == "sigma" else v)]
        return df.reset_index(drop=True)

    def _select(self, table: str | None) -> list[tuple[Any, ...]]:
        sql = "SELECT tbl, model, defense, sigma, image, extra, payload FROM rows"
        if table is None:
            return self._query(sql + " ORDER BY id")
        return self._query(sql + " WHERE tbl=? ORDER BY id", (table,))

    # -- export ----------------------------------------------------------
    def export(self, out_dir: str | Path, *, formats: Iterable[str] = ("csv", "parquet")) -> list[Path]:
        """Write ``<table>.csv`` / ``<table>.parquet`` for every table; returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        fmts = list(formats)
        unknown = sorted(set(fmts) - {"csv", "parquet"})
        if unknown:
            raise InputError(f"unknown export format(s) {unknown}; choose csv or parquet")
        paths: list[Path] = []
        for table in self.tables():
            df = _flatten_for_export(self.frame(table))
            for fmt in fmts:
                p = out / f"{table}.{fmt}"
                if fmt == "csv":  # text cells a spreadsheet would evaluate are neutralised
                    csv_frame(df).to_csv(p, index=False)
                else:
                    df.to_parquet(p, index=False)
                paths.append(p)
        return paths


def _flat(r: tuple[Any, ...]) -> dict[str, Any]:
    payload = json.loads(r[6])
    key = dict(zip(KEY_FIELDS, r[:6]))
    return {**key, **{k: v for k, v in payload.items() if k not in key}}


def _flatten_for_export(df: pd.DataFrame) -> pd.DataFrame:
    """Columns that mix types or hold lists/dicts become JSON text, so CSV and Parquet hold them."""
    df = df.copy()
    for col in df.columns:
        if df[col].dtype != object:
            continue
        present = [v for v in df[col] if not _missing(v)]
        kinds = {float if isinstance(v, int) and not isinstance(v, bool) else type(v) for v in present}
        if len(kinds) > 1 or kinds & {list, dict}:
            df[col] = [None if _missing(v) else json_text(v, col) for v in df[col]]
    return df


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _record(key: RowKey, payload: Mapping[str, Any]) -> tuple[Any, ...]:
    if not isinstance(key, RowKey):
        raise InputError(f"row key must be a RowKey, got {type(key).__name__}")
    if not isinstance(payload, Mapping):
        raise InputError(f"row payload must be a mapping, got {type(payload).__name__}")
    text = json_text(dict(payload), f"payload of {key}")
    return (*key.astuple(), text, time.time(), row_checksum(key, text))


def row_checksum(key: RowKey, payload_text: str) -> str:
    """SHA-256 (hex) of a row: its key fields and its payload's JSON text, as stored."""
    material = json.dumps([*key.astuple()[:3], float(key.sigma), *key.astuple()[4:], payload_text],
                          allow_nan=True, ensure_ascii=True)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def _key_text(k: RowKey) -> str:
    return f"{k.table}/{k.model}/{k.defense}/sigma={k.sigma:g}/{k.image}" + (f"/{k.extra}" if k.extra else "")


def _make_writable_dir(run: Path) -> None:
    """Create ``run`` (and parents) and check that files can be created in it; InputError naming the cause."""
    created = not run.exists()
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create run dir {run}: {exc.strerror or exc}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=run)
    except OSError as exc:
        if created:
            with contextlib.suppress(OSError):
                run.rmdir()
        raise InputError(f"cannot write in run dir {run}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def _remove_store_files(path: Path, *, remove_dir: bool) -> None:
    """Delete a store this process has just created (and its folder, if it created that too and it is empty)."""
    for name in (path.name, path.name + "-wal", path.name + "-shm", path.name + "-journal"):
        (path.parent / name).unlink(missing_ok=True)
    if remove_dir:
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def _connect(path: Path) -> sqlite3.Connection:
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per write.
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    except sqlite3.DatabaseError as exc:
        raise InputError(_describe(path, exc)) from None
    try:
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise InputError(_describe(path, exc)) from None
    return conn


def _describe(path: Path, exc: sqlite3.Error) -> str:
    """A one-line message for a SQLite failure on ``path``: what happened and what to do."""
    msg = str(exc)
    low = msg.lower()
    if "not a database" in low or "malformed" in low or "file is encrypted" in low:
        return f"{path} is not a readable results store ({msg}); it is corrupt: start over with --fresh"
    if "readonly" in low or "read-only" in low:
        return f"cannot write results store {path}: the file or its folder is read-only ({msg})"
    if "full" in low:
        return (f"cannot write results store {path}: the disk is full ({msg}); the rows written so far are "
                f"kept: free space, then continue with --resume")
    if "unable to open" in low:
        return f"cannot open results store {path}: {msg} (does its folder exist and is it writable?)"
    if "disk i/o" in low:
        return (f"cannot write results store {path}: disk I/O error ({msg}); the rows written so far are kept: "
                f"check the disk, then continue with --resume")
    return f"results store {path}: {msg}"


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error); SQLite errors become InputError."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn, self.path = conn, path

    def __enter__(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise InputError(_describe(self.path, exc)) from None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            if self.conn.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise InputError(_describe(self.path, exc)) from None
            return
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise InputError(_describe(self.path, exc)) from None


def _initialize(conn: sqlite3.Connection, config: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Create the tables and store the configuration, in one transaction."""
    cfg = canonical_config(config)
    try:
        with _transaction(conn, path):
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.execute("INSERT INTO meta VALUES ('config', ?)", (json_text(cfg, "run config"),))
            conn.execute("INSERT INTO meta VALUES ('created', ?)", (repr(time.time()),))
    except sqlite3.IntegrityError:
        raise InputError("another process created this run's store at the same time") from None
    except sqlite3.OperationalError as exc:  # disk full, read-only, I/O error
        raise InputError(f"cannot create results store {path}: {exc}") from None
    return cfg


def _read_config(conn: sqlite3.Connection, path: Path) -> tuple[dict[str, Any] | None, int]:
    """The stored configuration and schema version (None for a store whose creation never committed)."""
    try:
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        rows = dict(conn.execute("SELECT key, value FROM meta")) if has_meta else {}
    except sqlite3.DatabaseError as exc:
        raise InputError(_describe(path, exc)) from None
    if "config" not in rows:
        return None, SCHEMA_VERSION
    try:
        version = int(rows.get("schema_version", "0"))
    except ValueError:
        version = 0
    if version not in READABLE_VERSIONS:
        raise InputError(f"{path} has schema version {version}; this version of robustbench_iqa reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))} (re-run it with --fresh, or read it with the "
                         f"version that wrote it)")
    try:
        return dict(json.loads(rows["config"])), version
    except ValueError:
        raise InputError(f"{path} holds an unreadable run configuration; it is corrupt: start over with --fresh") from None
