"""Where commands write: the one gate every output directory (and output file) goes through.

`output_dir` creates a command's `--out` directory and writes a marker file into it (`.obliviate-output`, whose
first line is the command's kind, e.g. `unlearn`, `guard`, `demo:real`). It refuses, with a UsageError (exit 2):

- an `--out` that is, contains, or lies inside any input path (symlinks resolved; inputs that do not exist, such
  as hub ids, are skipped);
- a non-empty directory that is not an obliviate output of the same kind; one of the same kind only where the
  command continues it (`--resume`) or replaces it (a demo over an earlier demo's output);
- a path that is a file.

It never removes what this invocation did not create: when the command fails on bad input (a UsageError), only
the directories and files it made go; any other failure keeps them (checkpoints for `--resume`, what an
interrupted run had written). Under
`accelerate launch` / torchrun only rank 0 checks, marks and cleans; the other ranks share the directory.

`output_file` does the same for commands that write one file: it refuses an existing directory or an input, and
writes through a temporary file renamed into place.

Only the standard library and `obliviate.core.errors` are imported here, so every layer may use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

from obliviate.core.errors import UsageError

MARKER = ".obliviate-output"
LEGACY_DEMO_MARKER = ".obliviate-demo"  # what demos wrote before every output had a marker


def is_main_process() -> bool:
    """Rank 0 of a distributed launch (or a plain single process)."""
    return int(os.environ.get("RANK", "0")) == 0


def output_kind(path: str | Path) -> Optional[str]:
    """The kind an obliviate output directory was written by (its marker's first line); None when unmarked."""
    path = Path(path)
    try:
        text = (path / MARKER).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "demo" if (path / LEGACY_DEMO_MARKER).is_file() else None
    first = text.splitlines()[0].strip() if text.strip() else ""
    return first or None


def is_fresh_dir(path: str | Path) -> bool:
    """An existing directory that holds nothing but an output marker: one `output_dir` has just made, which a
    saver may write into directly."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and all(p.name == MARKER for p in path.iterdir())


@contextmanager
def new_dir(out: str | Path, what: str) -> Iterator[Path]:
    """Where a saver writes the directory `out`: `out` itself when it is a fresh directory (see `is_fresh_dir`),
    else, when `out` does not exist, a temporary sibling renamed to `out` at the end. Anything else at `out` is a
    UsageError: a saver never replaces or removes a directory it did not create."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not is_fresh_dir(out):
            raise UsageError(f"{out} already exists; {what} is written into a new directory only")
        yield out
        return
    made = _mkdirs(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _umask_mode(tmp)
        yield tmp
        os.replace(tmp, out)  # fails (nothing lost) if `out` appeared meanwhile and is not empty
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _rmdirs(made)
        raise


def _family(kind: str) -> str:
    return kind.split(":", 1)[0]


def _paths(inputs: Iterable) -> list[Path]:
    """The inputs that exist on disk (a hub id or a missing file cannot be overwritten)."""
    out = []
    for i in inputs:
        if i is None or i == "":
            continue
        p = Path(i)
        if p.exists() or p.is_symlink():
            out.append(p)
    return out


def _forms(p: Path) -> set[Path]:
    """The path as typed (made absolute, `..` folded) and with symlinks resolved."""
    return {Path(os.path.abspath(p)), p.resolve()}


def check_inputs(out: str | Path, inputs: Iterable = ()) -> None:
    """Refuse an `--out` that is, contains or lies inside an input."""
    out = Path(out)
    outs = _forms(out)
    for i in _paths(inputs):
        for ip in _forms(i):
            for o in outs:
                if o == ip:
                    why = "is the input"
                elif o in ip.parents:
                    why = "contains the input"
                elif ip in o.parents:
                    why = "lies inside the input"
                else:
                    continue
                raise UsageError(f"--out {out} {why} {i}; inputs are never written to, choose an --out outside them")


def _empty(d: Path) -> bool:
    return not any(d.iterdir())


def check_output(
    out: str | Path, kind: str, *, inputs: Iterable = (), resume: Optional[bool] = None, replace: bool = False
) -> None:
    """Everything `output_dir` checks before it creates anything, callable early (before a model loads)."""
    out = Path(out)
    check_inputs(out, inputs)
    if not is_main_process():
        return
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory; choose a new --out")
    if not out.is_dir() or _empty(out):
        return
    have = output_kind(out)
    if replace and have is not None and _family(have) == _family(kind):
        return
    if resume and have == kind:
        return
    if replace:
        raise UsageError(
            f"--out {out}: output directory is not empty and not an earlier {_family(kind)}'s output"
            + (f" (it holds a `{have}` output)" if have else "")
            + "; choose another --out"
        )
    if have is None:
        raise UsageError(
            f"--out {out}: output directory is not empty and holds no obliviate output; choose a new or empty directory"
        )
    if have != kind:
        raise UsageError(
            f"--out {out}: output directory is not empty: it holds a `{have}` output, not a `{kind}` "
            "one; choose a new --out"
        )
    how = "continue it with --resume, or choose a new --out" if resume is not None else "choose a new --out"
    raise UsageError(f"--out {out}: output directory is not empty: it holds an earlier `{kind}` output ({how})")


def _write_marker(d: Path, kind: str) -> None:
    (d / MARKER).write_text(
        f"{kind}\nwritten by obliviate; remove this directory to write a new `{kind}` output here\n", encoding="utf-8"
    )


def _mkdirs(out: Path) -> list[Path]:
    """mkdir -p `out`; returns the directories this call created, deepest first."""
    made = []
    p = out
    while not p.exists():
        made.append(p)
        if p.parent == p:
            break
        p = p.parent
    out.mkdir(parents=True, exist_ok=True)
    return made


def _rmdirs(made: list[Path]) -> None:
    """Remove the directories `_mkdirs` made, deepest first, while they are empty."""
    for d in made:
        try:
            d.rmdir()
        except OSError:
            break


def _remove_created(out: Path, made: list[Path], was_empty: bool) -> None:
    """Remove what this invocation created: `out` itself if it made it, else (when `out` was empty before) what
    is inside it now; then the parents it made, if they are empty."""
    if made and made[0] == out:
        shutil.rmtree(out, ignore_errors=True)
    elif was_empty and out.is_dir():
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    _rmdirs(made[1:])


def _umask_mode(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)  # mkdtemp / mkstemp make them private


@contextmanager
def output_dir(
    out: str | Path,
    kind: str,
    *,
    inputs: Iterable = (),
    resume: Optional[bool] = None,
    replace: bool = False,
    staged: bool = False,
) -> Iterator[Path]:
    """Create the output directory `out` for a command of `kind` and yield where to write.

    inputs: every path the command reads (model, data, oracle, guard directories...); `out` must be none of them,
      contain none and lie inside none.
    resume: None when the command cannot continue an earlier output; False / True when it can (`--resume`): with
      True an output of the same kind is continued.
    On bad input (a UsageError) what this invocation created is removed; other failures keep it (the checkpoints
    a later `--resume` continues from).
    replace: an earlier output of the same family (the kind before ':', e.g. any `demo:*`) is removed first; only
      a marked output is ever removed.
    staged: write into a temporary sibling directory (yielded) that is renamed to `out` at the end, so readers
      never see half an output; `out` must then be absent or empty.
    """
    out = Path(out)
    inputs = list(inputs)
    if staged and (resume or replace):
        raise ValueError("a staged output is always new: staged excludes resume and replace")
    check_output(out, kind, inputs=inputs, resume=resume, replace=replace)
    if not is_main_process():  # under `accelerate launch` / torchrun only rank 0 checks, marks and cleans
        out.mkdir(parents=True, exist_ok=True)
        yield out
        return
    if staged:
        yield from _staged(out, kind, inputs)
        return
    if replace and out.is_dir() and not _empty(out):
        shutil.rmtree(out)  # check_output made sure it is a marked output of this family
    was_empty = out.is_dir() and _empty(out)
    made = _mkdirs(out)
    if output_kind(out) is None:
        _write_marker(out, kind)
    try:
        yield out
    except UsageError:  # bad input (or a diverged loss): leave nothing behind
        _remove_created(out, made, was_empty)
        raise


def _staged(out: Path, kind: str, inputs: list):
    made = _mkdirs(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _umask_mode(tmp)
        _write_marker(tmp, kind)
        yield tmp
        check_output(out, kind, inputs=inputs)  # someone may have written `out` meanwhile
        if out.is_dir():
            out.rmdir()  # empty: replaced by the finished output
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _rmdirs(made)
        raise


def check_output_file(out: str | Path, *, inputs: Iterable = (), overwrite: bool = True) -> None:
    """Refuse an output file that is an existing directory, one of the inputs, or (without `overwrite`) exists."""
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name")
    outs = _forms(out)
    for i in _paths(inputs):
        if outs & _forms(i):
            raise UsageError(f"--out {out} is the input {i}; inputs are never written to, choose another --out")
    if not overwrite and (out.exists() or out.is_symlink()):
        raise UsageError(f"--out {out} exists; choose another --out")


@contextmanager
def output_file(out: str | Path, *, inputs: Iterable = (), overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `out`; when the block ends without error it is renamed to `out` (readers
    never see half a file), otherwise removed. `overwrite`: whether an existing `out` may be replaced."""
    out = Path(out)
    check_output_file(out, inputs=inputs, overwrite=overwrite)
    made = _mkdirs(out.parent)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        check_output_file(out, inputs=inputs, overwrite=overwrite)
        _umask_mode(tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        _rmdirs(made)
        raise
