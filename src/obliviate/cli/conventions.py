"""Output conventions every command shares, applied once around the command by `cli.app.main`:

- `--quiet` (any command): no progress bars, logs or library warnings on stderr while the command runs; results
  still go to stdout, and an error still prints its one line.
- `--json` (any command that writes results under `--out`): the command's own printing goes to stderr, and stdout
  gets exactly one JSON document when it ends: its results file (`results.json`, else `audit.json`,
  `leaderboard.json`, `calibration.json`, `sweep.json`, `align.json`) from the output directory. Commands that
  define their own `--json` (`runs ...`, `tofu-score`, `muse-eval`, `judge ...`) keep it.

- `--dtype float32|bfloat16|float16` (any command that loads a model, unless it defines its own `--dtype`, as
  `models convert` does): the dtype models are loaded in (`OBLIVIATE_DTYPE`, read by `models.load.load_model`;
  float32 by default).

These flags may stand anywhere on the command line; they are taken out before the command's parser sees them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Optional

RESULT_FILES = ("results.json", "audit.json", "leaderboard.json", "calibration.json", "sweep.json", "align.json")


def _resolve(app, argv: list[str]):
    """(the click command argv names, the arguments after its name); (None, []) for a bare group or a typo."""
    import typer

    cmd, rest = typer.main.get_command(app), list(argv)
    while hasattr(cmd, "commands"):
        if not rest or rest[0].startswith("-"):
            return None, []
        cmd = cmd.commands.get(rest.pop(0))
        if cmd is None:
            return None, []
    return cmd, rest


def defines(app, argv: list[str], option: str) -> bool:
    cmd, _ = _resolve(app, argv)
    return cmd is not None and any(option in p.opts for p in cmd.params)


def take_flags(app, argv: list[str]) -> tuple[list[str], bool, bool]:
    """(argv without the global flags, quiet, json). A flag the command defines itself is left in place."""
    quiet = "--quiet" in argv and not defines(app, argv, "--quiet")
    as_json = "--json" in argv and not defines(app, argv, "--json")
    drop = {f for f, on in (("--quiet", quiet), ("--json", as_json)) if on}
    return [a for a in argv if a not in drop], quiet, as_json


def take_value(app, argv: list[str], flag: str) -> tuple[list[str], Optional[str]]:
    """(argv without `flag VALUE` / `flag=VALUE`, VALUE), when the command does not define `flag` itself. A flag
    without its value is a UsageError."""
    from obliviate.core.errors import UsageError

    if not any(a == flag or a.startswith(flag + "=") for a in argv):
        return argv, None
    rest, value, missing, i = [], None, False, 0
    while i < len(argv):
        a = argv[i]
        if a == flag:
            missing = i + 1 >= len(argv) or argv[i + 1].startswith("-")
            value, i = (None, i + 1) if missing else (argv[i + 1], i + 2)
            continue
        if a.startswith(flag + "="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    # the command is named once the flag is out (`obliviate --dtype bf16 models convert ...`); a command with its own
    # flag gets the line untouched, and its parser reports what is wrong with it
    if defines(app, rest, flag):
        return argv, None
    if missing:
        raise UsageError(f"{flag} needs a value")
    return rest, value


def out_dir(app, argv: list[str]) -> Optional[Path]:
    """The command's --out (its default included), read without running it."""
    cmd, rest = _resolve(app, argv)
    if cmd is None:
        return None
    try:
        ctx = cmd.make_context("obliviate", rest, resilient_parsing=True)
    except Exception:  # noqa: BLE001 - the command itself will report a bad command line
        return None
    out = ctx.params.get("out")
    return Path(out) if isinstance(out, (str, Path)) else None


_REAL_STDERR: list = []  # the stderr in effect before --quiet: error lines still go there


def error_stream():
    return _REAL_STDERR[-1] if _REAL_STDERR else sys.stderr


@contextlib.contextmanager
def quiet_stderr():
    """Everything written to sys.stderr while the command runs is dropped (library progress bars too), except the
    error line `cli.app` writes to `error_stream()`."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ["OBLIVIATE_QUIET"] = "1"
    _REAL_STDERR.append(sys.stderr)
    sys.stderr = io.StringIO()
    try:
        yield
    finally:
        sys.stderr = _REAL_STDERR.pop()


@contextlib.contextmanager
def stdout_to_stderr():
    """The command's prints go to stderr, so stdout carries only the JSON document."""
    saved = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = saved


def print_results(out: Optional[Path]) -> None:
    """The first results file in `out`, as one JSON document on stdout ({"out": ...} when there is none)."""
    for name in RESULT_FILES:
        p = Path(out) / name if out else None
        if p is not None and p.is_file():
            sys.stdout.write(p.read_text(encoding="utf-8").rstrip("\n") + "\n")
            return
    sys.stdout.write(json.dumps({"out": str(out) if out else None}) + "\n")
