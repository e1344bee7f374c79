"""Where the run registry lives, how it is opened, and its versioned schema.

One SQLite file, shared by every obliviate process on the machine:
- WAL mode: readers never block the one writer, and a killed writer cannot leave a half-written transaction;
- a long busy timeout plus `BEGIN IMMEDIATE` for every write: concurrent writers queue instead of failing
  (a deferred transaction that upgrades to a write can get SQLITE_BUSY at once in WAL mode, so none is used);
- `PRAGMA user_version` is the schema version; `MIGRATIONS[i]` upgrades version i to i + 1, in place.

Before anything is written, an existing file is checked through a read-only connection: a file that is not
SQLite, a malformed one, or one from a newer schema raises UsageError and is left byte-for-byte untouched.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Callable, Optional, Union

from obliviate.core.errors import UsageError

DEFAULT_PATH = Path("runs") / "registry.sqlite"  # relative to the current directory
ENV = "OBLIVIATE_REGISTRY"
OFF = "off"
BUSY_TIMEOUT_S = 60.0  # a writer waits this long for another; transactions last milliseconds

Migration = Union[str, Callable[[sqlite3.Connection], None]]

# Version 1: the initial schema. Times are ISO 8601 UTC strings (sortable as text); argv and versions are JSON.
# Append a migration to change the schema; never edit a released one (databases in the field ran it already).
MIGRATIONS: list[Migration] = [
    """
    CREATE TABLE runs (
        id          TEXT PRIMARY KEY,
        command     TEXT NOT NULL,
        argv        TEXT NOT NULL DEFAULT '[]',
        suite       TEXT,
        method      TEXT,
        model       TEXT,
        config_hash TEXT,
        data_hash   TEXT,
        git_commit  TEXT,
        versions    TEXT NOT NULL DEFAULT '{}',
        machine     TEXT,
        host        TEXT,
        started     TEXT NOT NULL,
        ended       TEXT,
        status      TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
        pid         INTEGER,
        out_dir     TEXT,
        error       TEXT
    );
    CREATE INDEX runs_started ON runs (started);
    CREATE INDEX runs_out_dir ON runs (out_dir);
    CREATE TABLE metrics (
        run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        name   TEXT NOT NULL,
        value  REAL,
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE artifacts (
        run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        kind   TEXT NOT NULL,
        path   TEXT NOT NULL,
        PRIMARY KEY (run_id, path)
    );
    """,
]


def schema_version() -> int:
    """The version this code writes: one per migration."""
    return len(MIGRATIONS)


def registry_path(path: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """The database file: `path`, else $OBLIVIATE_REGISTRY, else runs/registry.sqlite. None: recording is off."""
    chosen = str(path) if path is not None else os.environ.get(ENV, "").strip() or str(DEFAULT_PATH)
    if chosen.lower() == OFF:
        return None
    return Path(chosen).expanduser()


def _problem(path: Path, what: str) -> UsageError:
    return UsageError(f"run registry {path}: {what}")


def check_readable(path: Path) -> int:
    """The schema version of an existing database, read without writing a byte; UsageError when unusable."""
    if path.is_dir():
        raise _problem(path, "is a directory, not a database file")
    try:
        # mode=ro: this connection can never write, so a bad file stays exactly as it was
        con = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as e:
        raise _problem(path, f"cannot be opened ({e})") from None
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        # quick_check: one row "ok", or one row per problem (the first may carry a "*** in database" header)
        problems = [
            ln.strip()
            for row in con.execute("PRAGMA quick_check").fetchall()
            for ln in str(row[0]).splitlines()
            if ln.strip() and not ln.startswith("***")
        ]
    except sqlite3.DatabaseError as e:
        raise _problem(
            path,
            f"is not a usable SQLite database ({e}); move it away, then "
            f"`obliviate runs rebuild DIR` re-indexes the results files",
        ) from None
    finally:
        con.close()
    if problems != ["ok"]:
        more = f", and {len(problems) - 1} more problems" if len(problems) > 1 else ""
        raise _problem(
            path,
            f"is corrupt ({problems[0] if problems else 'unknown damage'}{more}); move it "
            f"away, then `obliviate runs rebuild DIR` re-indexes the results files",
        )
    if version > schema_version():
        raise _problem(
            path,
            f"has schema version {version}, newer than this obliviate reads ({schema_version()}); upgrade obliviate",
        )
    return version


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the database; UsageError when it is unusable or newer."""
    if path.exists():
        check_readable(path)
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _problem(path, f"cannot create its directory ({e.strerror})") from None
    try:
        # isolation_level=None: no implicit transactions; every write below opens its own BEGIN IMMEDIATE
        con = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")  # durable at each checkpoint; safe with WAL
        con.execute("PRAGMA foreign_keys = ON")
        migrate(con)
    except sqlite3.DatabaseError as e:
        raise _problem(path, f"cannot be opened for writing ({e})") from None
    return con


def migrate(con: sqlite3.Connection) -> None:
    """Bring the schema to `schema_version()` in one transaction; data is kept, never dropped."""
    if con.execute("PRAGMA user_version").fetchone()[0] == schema_version():
        return
    con.execute("BEGIN IMMEDIATE")
    try:
        # re-read under the write lock: another process may have migrated meanwhile
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > schema_version():
            raise UsageError(
                f"run registry has schema version {version}, newer than this obliviate reads "
                f"({schema_version()}); upgrade obliviate"
            )
        for step in MIGRATIONS[version:]:
            if callable(step):
                step(con)
            else:
                # one statement at a time: executescript() would COMMIT mid-migration
                for statement in step.split(";"):
                    if statement.strip():
                        con.execute(statement)
        con.execute(f"PRAGMA user_version = {schema_version()}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
