"""The run registry: one row per run, one per run x metric, one per artifact. Every write is one short
`BEGIN IMMEDIATE` transaction, so parallel processes queue for milliseconds and never lose a row."""

from __future__ import annotations

import difflib
import json
import secrets
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional, Union

from obliviate.core.errors import UsageError
from obliviate.runs import db
from obliviate.runs.results import now, read_results

STATUSES = ("running", "done", "failed", "interrupted")
RUN_COLUMNS = (
    "id",
    "command",
    "argv",
    "suite",
    "method",
    "model",
    "config_hash",
    "data_hash",
    "git_commit",
    "versions",
    "machine",
    "host",
    "started",
    "ended",
    "status",
    "pid",
    "out_dir",
    "error",
)
JSON_COLUMNS = ("argv", "versions")


def new_id(when: Optional[datetime] = None) -> str:
    """Time-sortable and short: UTC second + 6 random hex digits (a clash needs 16M runs in one second)."""
    when = when or datetime.now(timezone.utc)
    return when.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


class RunStore:
    """The run registry's database, open (named apart from the plugin registries of `obliviate.core.registry`).
    `RunStore.open()` resolves the path (explicit, $OBLIVIATE_REGISTRY, runs/...)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.con = db.connect(self.path)

    @classmethod
    def open(cls, path: Optional[Union[str, Path]] = None) -> "RunStore":
        p = db.registry_path(path)
        if p is None:
            raise UsageError(f"the run registry is off ({db.ENV}=off); choose one with --registry PATH")
        return cls(p)

    def close(self) -> None:
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def write(self):
        """One write transaction: taken with the lock up front (no SQLITE_BUSY upgrade in WAL mode)."""
        self.con.execute("BEGIN IMMEDIATE")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    # --- writing -------------------------------------------------------------------------------------------

    def insert_run(
        self, record: dict, metrics: Optional[dict] = None, artifacts: Iterable[tuple[str, str]] = ()
    ) -> str:
        """Insert a run (missing id: a new one; missing status: running) with its metrics and artifacts."""
        row = {c: record.get(c) for c in RUN_COLUMNS}
        row["status"] = row["status"] or "running"
        row["started"] = row["started"] or now()
        if row["status"] not in STATUSES:
            raise UsageError(f"unknown run status {row['status']!r} (one of {', '.join(STATUSES)})")
        for c in JSON_COLUMNS:
            if not isinstance(row[c], str):
                row[c] = json.dumps(row[c] if row[c] is not None else ([] if c == "argv" else {}))
        given = row["id"]
        for _ in range(5):  # a fresh id clashes only by a 1-in-16M chance; retry rather than fail the run
            row["id"] = given or new_id()
            try:
                with self.write() as con:
                    con.execute(
                        f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
                        [row[c] for c in RUN_COLUMNS],
                    )
                    self._put(con, row["id"], metrics or {}, artifacts)
                return row["id"]
            except sqlite3.IntegrityError:
                if given:
                    raise UsageError(f"run {given} is already in the registry") from None
        raise UsageError("could not find a free run id")

    @staticmethod
    def _put(con, run_id: str, metrics: dict, artifacts: Iterable[tuple[str, str]]) -> None:
        con.executemany(
            "INSERT OR REPLACE INTO metrics (run_id, name, value) VALUES (?, ?, ?)",
            [(run_id, name, value) for name, value in metrics.items()],
        )
        con.executemany(
            "INSERT OR REPLACE INTO artifacts (run_id, kind, path) VALUES (?, ?, ?)",
            [(run_id, kind, path) for kind, path in artifacts],
        )

    def update_run(self, run_id: str, **fields) -> None:
        unknown = set(fields) - set(RUN_COLUMNS)
        if unknown:
            raise ValueError(f"unknown run fields: {sorted(unknown)}")
        if not fields:
            return
        with self.write() as con:
            con.execute(
                f"UPDATE runs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                [json.dumps(v) if k in JSON_COLUMNS and not isinstance(v, str) else v for k, v in fields.items()]
                + [run_id],
            )

    def finish_run(self, run_id: str, status: str, error: Optional[str] = None, **fields) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self.update_run(run_id, status=status, ended=now(), error=error, **fields)

    def record_results(self, run_id: str, out_dir: Union[str, Path]) -> dict:
        """Replace the run's metrics and artifacts with what `out_dir`'s results files hold (the same reader
        as `runs rebuild`); the run's config hash becomes that of the files' config when they have one."""
        info = read_results(Path(out_dir))
        with self.write() as con:
            con.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            con.execute("DELETE FROM artifacts WHERE run_id = ?", (run_id,))
            self._put(con, run_id, info["metrics"], info["artifacts"])
            if info["config_hash"]:
                con.execute("UPDATE runs SET config_hash = ? WHERE id = ?", (info["config_hash"], run_id))
        return info

    def delete_runs(self, run_ids: Iterable[str]) -> int:
        ids = list(run_ids)
        with self.write() as con:
            for table, column in (("metrics", "run_id"), ("artifacts", "run_id"), ("runs", "id")):
                con.executemany(f"DELETE FROM {table} WHERE {column} = ?", [(i,) for i in ids])
        return len(ids)

    # --- reading -------------------------------------------------------------------------------------------

    @staticmethod
    def _run(row: sqlite3.Row) -> dict:
        run = {k: row[k] for k in row.keys()}
        for c in JSON_COLUMNS:
            try:
                run[c] = json.loads(run[c]) if run[c] else ([] if c == "argv" else {})
            except ValueError:
                pass  # written by hand: show it as it is
        return run

    def runs(
        self,
        suite: Optional[str] = None,
        method: Optional[str] = None,
        model: Optional[str] = None,
        since: Optional[str] = None,
        status: Optional[str] = None,
    ) -> list[dict]:
        """Runs, oldest first. suite / method / model match exactly, or as a glob with * and ?."""
        where, args = [], []
        for column, value in (("suite", suite), ("method", method), ("model", model), ("status", status)):
            if value is not None:
                where.append(f"{column} GLOB ?")
                args.append(value)
        if since is not None:
            where.append("started >= ?")
            args.append(since)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY started, id"
        return [self._run(r) for r in self.con.execute(sql, args)]

    def ids(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT id FROM runs ORDER BY started, id")]

    def resolve(self, ref: str) -> str:
        """A run id from the id or a unique prefix of it; UsageError (with a close match) otherwise."""
        ids = self.ids()
        if ref in ids:
            return ref
        hits = [i for i in ids if i.startswith(ref)] if ref else []
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            shown = ", ".join(hits[:5]) + (", ..." if len(hits) > 5 else "")
            raise UsageError(f"run id prefix {ref!r} matches {len(hits)} runs ({shown}); give more of it")
        close = difflib.get_close_matches(ref, ids, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else " (see `obliviate runs ls`)"
        raise UsageError(f"no run {ref!r} in {self.path}{hint}")

    def get(self, ref: str) -> dict:
        run_id = self.resolve(ref)
        run = self._run(self.con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())
        run["metrics"] = self.metrics(run_id)
        run["artifacts"] = self.artifacts(run_id)
        return run

    def metrics(self, run_id: str) -> dict[str, Optional[float]]:
        return {
            r[0]: r[1]
            for r in self.con.execute("SELECT name, value FROM metrics WHERE run_id = ? ORDER BY name", (run_id,))
        }

    def all_metrics(self) -> dict[str, dict[str, Optional[float]]]:
        """{run id: {name: value}} in one query (ls shows many runs)."""
        out: dict = {}
        for run_id, name, value in self.con.execute("SELECT run_id, name, value FROM metrics ORDER BY name"):
            out.setdefault(run_id, {})[name] = value
        return out

    def artifacts(self, run_id: str) -> list[dict]:
        return [
            {"kind": r[0], "path": r[1]}
            for r in self.con.execute("SELECT kind, path FROM artifacts WHERE run_id = ? ORDER BY path", (run_id,))
        ]

    def out_dirs(self) -> set[str]:
        return {r[0] for r in self.con.execute("SELECT out_dir FROM runs WHERE out_dir IS NOT NULL")}

    def integrity(self) -> str:
        return self.con.execute("PRAGMA quick_check").fetchone()[0]
