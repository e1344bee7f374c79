"""The CLI's one hook into the registry: every command with an `--out` option records its run.

`start()` runs before the command: it parses the command line the way the command will (click's resilient
parsing, so defaults such as `demo --out runs/demo` count too) and inserts a `running` row. `finish()` runs after:
- success: `done`, the metrics and artifacts of the output directory, and `.obliviate-run.json` written into it
  (the live record, so `runs rebuild` restores the run exactly, hashes and git commit included);
- exit 2 (bad input) that left the output path as it found it: the row is deleted, since nothing ran;
  exit 2 after output appeared: `failed`, with the error line;
- Ctrl-C: `interrupted`; any other exception or non-zero exit: `failed`, with the error line;
- a killed process leaves `running`, which `runs doctor` turns into `interrupted`.
The registry must never break the user's command: any failure here is one warning line on stderr.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from obliviate.core.errors import UsageError
from obliviate.runs import db
from obliviate.runs.results import RUN_FILE, canonical_hash, data_hash

VERSIONED = ("torch", "transformers", "obliviate")
# never recorded: `runs` manages the registry, `report` only renders runs that are recorded already
NOT_RECORDED = {"runs", "report"}


@dataclass
class LiveRun:
    path: Path  # the registry file
    run_id: str
    out: Path
    before: object  # the output path's state at start (see _snapshot)


def warn(message: str) -> None:
    sys.stderr.write(f"warning: run registry: {' '.join(str(message).split())}; this run is not fully recorded\n")


def _parse(app, argv: list[str]):
    """(command name, click context with the parsed parameters) or None when argv names no recordable command."""
    import typer

    cmd = typer.main.get_command(app)
    names, rest = [], list(argv)
    while hasattr(cmd, "commands"):  # a group: the next token names its subcommand
        if not rest or rest[0].startswith("-"):
            return None
        names.append(rest.pop(0))
        cmd = cmd.commands.get(names[-1])
        if cmd is None or names[0] in NOT_RECORDED:
            return None
    # resilient: no callbacks fail, no missing option raises; the command itself reports bad input later
    ctx = cmd.make_context(" ".join(names), rest, resilient_parsing=True)
    return " ".join(names), ctx


def _git_commit() -> Optional[str]:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=3, cwd=Path(__file__).parent
        )
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    """Installed versions, read from package metadata: importing torch here would cost seconds."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _snapshot(out: Path):
    """Enough of the output path's state to tell whether a command wrote anything there."""
    try:
        st = out.stat()
    except OSError:
        return None
    listing = tuple(sorted(os.listdir(out))[:1000]) if out.is_dir() else ()
    return st.st_mtime_ns, st.st_size if not out.is_dir() else 0, listing


def _text(value) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or None
    return str(value)


def describe(command: str, params: dict, given: set[str]) -> dict:
    """The run's fields that the command line decides (suite, method, model, hashes), from parsed parameters."""
    from obliviate.models.load import dtype_entry  # standard library only, as this module

    method = params.get("method") or (params.get("name") if command == "guard fit" else None)
    data = []
    for key, value in params.items():  # data: paths typed on the command line, other than --out
        if key == "out" or key not in given:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, Path):
                data.append(v)
    return {
        "suite": _text(params.get("suite")),
        "method": _text(method),
        "model": _text(params.get("model")),
        "config_hash": canonical_hash(
            {"command": command, **{k: v for k, v in params.items() if k != "out"}, **dtype_entry()}
        ),
        "data_hash": data_hash(data),
    }


def start(app, argv: list[str], recorded: Optional[list[str]] = None) -> Optional[LiveRun]:
    """Insert a `running` row for this command; None when it is not recorded (no --out, --help, registry off).
    `argv` is what the command's parser reads; `recorded` (default: argv) the command line as typed, global flags
    (`--dtype`, `--quiet`, `--json`) included."""
    if "--help" in argv or os.environ.get("RANK", "0") != "0":  # only rank 0 of a distributed launch records
        return None
    path = db.registry_path()
    if path is None:
        return None
    try:
        parsed = _parse(app, argv)
    except Exception:  # noqa: BLE001 - a command line click cannot read: the command itself will say why
        return None
    if parsed is None:
        return None
    command, ctx = parsed
    out = ctx.params.get("out")
    if not isinstance(out, (str, Path)):
        return None
    out = Path(out)
    try:
        given = {k for k in ctx.params if (s := ctx.get_parameter_source(k)) is not None and s.name == "COMMANDLINE"}
        from obliviate.runs.store import RunStore

        record = {
            "command": command,
            "argv": ["obliviate", *(argv if recorded is None else recorded)],
            **describe(command, ctx.params, given),
            "git_commit": _git_commit(),
            "versions": _versions(),
            "machine": platform.platform(),
            "host": socket.gethostname(),
            "status": "running",
            "pid": os.getpid(),
            "out_dir": str(out.resolve()),
        }
        with RunStore(path) as reg:
            run_id = reg.insert_run(record)
        return LiveRun(path, run_id, out, _snapshot(out))
    except Exception as e:  # noqa: BLE001 - a registry problem must not stop the user's command
        warn(f"{path}: {e}")
        return None


def _outcome(exc: Optional[BaseException]) -> tuple[int, Optional[BaseException]]:
    """(exit code, the exception behind it). main() turns errors into SystemExit inside `except`, so the
    original error is the SystemExit's __context__."""
    if exc is None:
        return 0, None
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return code, exc.__context__
    if isinstance(exc, KeyboardInterrupt):
        return 130, exc
    return 1, exc


def _error_line(code: int, cause: Optional[BaseException]) -> str:
    if cause is None:
        return f"exit code {code}"
    text = cause.format_message() if hasattr(cause, "format_message") else str(cause)
    line = " ".join(text.split())
    if not isinstance(cause, UsageError):  # bad input says itself; anything else names its kind
        line = f"{type(cause).__name__}: {line}" if line else type(cause).__name__
    return line[:500]


def write_run_file(out: Path, run: dict) -> None:
    """The run's own record beside its results, written atomically (never half a file)."""
    if not out.is_dir():
        return
    record = {k: v for k, v in run.items() if k not in ("metrics", "artifacts")}
    tmp = out / (RUN_FILE + ".tmp")
    tmp.write_text(
        json.dumps({"registry_schema": db.schema_version(), "run": record}, indent=2) + "\n", encoding="utf-8"
    )
    tmp.replace(out / RUN_FILE)


def finish(live: Optional[LiveRun], exc: Optional[BaseException]) -> None:
    """Close the run that `start` opened, according to how the command ended (see the module docstring)."""
    if live is None:
        return
    code, cause = _outcome(exc)
    try:
        from obliviate.runs.store import RunStore

        with RunStore(live.path) as reg:
            if code == 0:
                reg.record_results(live.run_id, live.out)
                reg.finish_run(live.run_id, "done")
                write_run_file(live.out, reg.get(live.run_id))
            elif code == 130 or isinstance(cause, KeyboardInterrupt):
                reg.finish_run(live.run_id, "interrupted", "interrupted (Ctrl-C)")
            elif code == 2 and _snapshot(live.out) == live.before:
                reg.delete_runs([live.run_id])  # refused before doing anything: not a run
            else:
                reg.finish_run(live.run_id, "failed", _error_line(code, cause))
    except Exception as e:  # noqa: BLE001 - the command's own outcome stands whatever happens here
        warn(f"{live.path}: {e}")
