"""`runs doctor` (runs whose process died become `interrupted`) and `runs rebuild` (re-index output directories
when the database is lost). Both are idempotent: running them twice changes nothing the second time."""

from __future__ import annotations

import hashlib
import os
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

from obliviate.core.errors import UsageError
from obliviate.runs.results import RESULT_FILES, RUN_FILE, now, read_doc, read_results
from obliviate.runs.store import RUN_COLUMNS, RunStore

STALE_ELSEWHERE = timedelta(hours=24)  # a run started on another host: we cannot see its pid


def _parse_time(text: Optional[str]) -> Optional[datetime]:
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _process_start(pid: int) -> Optional[float]:
    """When process `pid` started (epoch seconds), from /proc; None where /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime; the name may hold spaces
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def pid_alive(pid: Optional[int], started: Optional[str]) -> bool:
    """Whether the run's process still exists on this host; a pid reused by a later process does not count."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    except OSError:
        return False
    t0, begun = _parse_time(started), _process_start(pid)
    if t0 is not None and begun is not None and begun > t0.timestamp() + 60:
        return False  # that pid now belongs to a process born after the run started
    return True


def doctor(reg: RunStore) -> dict:
    """Mark `running` runs whose process is gone as `interrupted`; report the database's integrity."""
    host = socket.gethostname()
    running = reg.runs(status="running")
    fixed = []
    for run in running:
        if run["host"] == host:
            alive = pid_alive(run["pid"], run["started"])
        else:
            t0 = _parse_time(run["started"])
            alive = t0 is not None and datetime.now(timezone.utc) - t0 < STALE_ELSEWHERE
        if not alive:
            # `ended` stays empty: when the process died is unknown
            reg.update_run(
                run["id"],
                status="interrupted",
                error=f"the process ended without finishing (found by `runs doctor` at {now()})",
            )
            fixed.append(run["id"])
    return {
        "registry": str(reg.path),
        "running_checked": len(running),
        "interrupted": fixed,
        "integrity": reg.integrity(),
    }


def _recorded(directory: Path) -> Optional[dict]:
    """The live record `.obliviate-run.json` that the CLI hook left, when present and well-formed."""
    doc = read_doc(directory / RUN_FILE) if (directory / RUN_FILE).is_file() else None
    run = doc.get("run") if doc else None
    return run if isinstance(run, dict) and isinstance(run.get("command"), str) else None


def _from_files(directory: Path, info: dict) -> dict:
    """A run rebuilt from results files alone: a deterministic id (time + hash of the path), status done."""
    resolved = str(directory.resolve())
    ended = (_parse_time(info["created"]) or datetime.now(timezone.utc)).astimezone(timezone.utc)
    started = ended - timedelta(seconds=info["wall_seconds"] or 0)
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:6]
    return {
        "id": ended.strftime("%Y%m%d-%H%M%S-") + digest,
        "command": info["command"],
        "argv": [],
        "suite": info["suite"],
        "method": info["method"],
        "model": info["model"],
        "config_hash": info["config_hash"],
        "started": started.isoformat(timespec="seconds"),
        "ended": ended.isoformat(timespec="seconds"),
        "status": "done",
        "out_dir": resolved,
    }


def output_dirs(root: Path) -> list[Path]:
    """Directories under `root` (itself included) that hold results files or a run record, sorted."""
    found = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(n for n in dirs if not n.startswith(".") and n != "checkpoints")
        if RUN_FILE in files or any(name in files for name in RESULT_FILES):
            found.append(Path(d))
    return found


def rebuild(reg: RunStore, root: Path) -> dict:
    """One run per output directory under `root` that the registry does not hold yet (by id or out_dir)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"runs rebuild: {root} is not a directory")
    known_dirs, known_ids = reg.out_dirs(), set(reg.ids())
    added, skipped = [], []
    for directory in output_dirs(root):
        resolved = str(directory.resolve())
        info = read_results(directory)  # the same reader as the live recording
        record = _recorded(directory)
        if record is not None:
            record = {k: record.get(k) for k in RUN_COLUMNS} | {"out_dir": resolved}
        elif info["files"]:
            record = _from_files(directory, info)
        else:
            continue
        if resolved in known_dirs or record["id"] in known_ids:
            skipped.append(record["id"])
            continue
        if info["config_hash"] and not record.get("config_hash"):
            record["config_hash"] = info["config_hash"]
        run_id = reg.insert_run(record, info["metrics"], info["artifacts"])
        known_ids.add(run_id)
        known_dirs.add(resolved)
        added.append(run_id)
    return {"registry": str(reg.path), "root": str(root), "added": added, "skipped": skipped}
