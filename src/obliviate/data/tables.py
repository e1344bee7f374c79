"""Tabular data as it is published: Parquet, Arrow (IPC file or stream, Feather) and HF hub dataset ids.

`read_table_records` gives the same `[(where, dict)]` pairs as `schema.read_records` does for JSON, with
`where = "FILE: row i"` (1-based), so every schema check reads the same whatever the format. Cells are plain
Python (str, int, float, list[str], dict); a null cell is left out of its row, since a column store has no other
way to say "absent" (a JSONL row without `perturbed_answer` and a Parquet row with it null read the same).

`read_table_rows` reads prompt files (CSV, Parquet, Arrow, JSON, JSONL or a hub id) into rows of strings, as
`csv.DictReader` gives them, with a one-line error for missing columns.

A path that does not exist and looks like a HF dataset id is loaded with `datasets.load_dataset` (optional:
`pip install datasets`), spelled

    OWNER/NAME                  the dataset's only split (several splits: an error that lists them)
    OWNER/NAME:CONFIG           a named configuration (subset), e.g. muse-bench/MUSE-News:knowmem
    OWNER/NAME:CONFIG:SPLIT     e.g. cais/wmdp:wmdp-bio:test; OWNER/NAME::SPLIT for the default configuration

Nothing touches the network for a path that exists. Offline (HF_HUB_OFFLINE=1) only a copy already in the
`datasets` cache loads; `datasets` not installed, offline without a cached copy, or an unknown id is a one-line
UsageError "... could not be fetched: <first line of the error>".
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from obliviate.core.errors import UsageError

TABLE_SUFFIXES = (".parquet", ".arrow", ".feather")
# a missing path with one of these suffixes is a missing file, never a dataset id
_FILE_SUFFIXES = {*TABLE_SUFFIXES, ".json", ".jsonl", ".csv", ".tsv", ".txt"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(:[^:/\s]*){0,2}$")


def looks_like_hub_id(path: str | Path) -> bool:
    """`OWNER/NAME[:CONFIG[:SPLIT]]` that is not a local path: no data-file suffix, and OWNER is not a local folder."""
    s = str(path)
    if not _HUB_ID.match(s):
        return False
    name = s.split(":", 1)[0]
    return Path(name).suffix.lower() not in _FILE_SUFFIXES and not Path(name.split("/")[0]).is_dir()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].strip()


def _plain(v):
    """numpy / arrow scalars and arrays as plain Python (to_pylist already gives plain values; datasets may not)."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "as_py"):  # a pyarrow scalar
        return _plain(v.as_py())
    if hasattr(v, "tolist"):  # a numpy array or scalar
        return _plain(v.tolist())
    return v


def table_format(path: str | Path) -> str | None:
    """ ".parquet", ".arrow" or ".feather" by the suffix; for an existing file with another suffix (a hub cache blob,
    a file renamed without one), by its first bytes; None for anything else."""
    p = Path(path)
    if p.suffix.lower() in TABLE_SUFFIXES:
        return p.suffix.lower()
    if not p.is_file():
        return None
    with p.open("rb") as f:
        head = f.read(6)
    if head[:4] == b"PAR1":
        return ".parquet"
    if head == b"ARROW1" or head[:4] == b"\xff\xff\xff\xff":  # the IPC file, the IPC stream
        return ".arrow"
    if head[:4] == b"FEA1":  # Feather v1
        return ".feather"
    return None


def _arrow_table(p: Path):
    """The file's pyarrow Table; an unreadable or corrupt file is a one-line UsageError naming it."""
    import pyarrow as pa

    suffix = table_format(p)

    def read():
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(p)
        if suffix == ".feather":
            import pyarrow.feather as feather

            return feather.read_table(p)
        import pyarrow.ipc as ipc

        try:  # the IPC file format (Feather v2); `datasets.save_to_disk` writes the streaming format
            with pa.memory_map(str(p)) as src:
                return ipc.open_file(src).read_all()
        except pa.ArrowInvalid:
            with pa.memory_map(str(p)) as src:
                return ipc.open_stream(src).read_all()

    try:
        table = read()
        # reading checks the layout only; a damaged file can still hold bad offsets or strings that are not UTF-8,
        # which would crash converting the rows (to_pylist): the full validation finds them first
        table.validate(full=True)
        return table
    except (pa.ArrowException, OSError, ValueError) as e:
        kind = {".parquet": "Parquet", ".feather": "Feather"}.get(suffix or "", "Arrow")
        raise UsageError(f"{p}: unreadable {kind} file ({_first_line(e)})") from None


def _load_hub(spec: str):
    """(column names, plain rows) of a hub dataset split; any failure is one UsageError line."""
    name, config, split = (spec.split(":") + ["", ""])[:3]
    try:
        import datasets  # optional: pip install datasets
    except ImportError:
        raise UsageError(
            f"{spec}: not a file, and dataset {name!r} could not be fetched: the optional "
            "`datasets` package is not installed (pip install datasets)"
        ) from None
    try:
        ds = datasets.load_dataset(name, config or None, split=split or None)
    except Exception as e:  # offline, unknown id or config, no access
        raise UsageError(f"{spec}: not a file, and dataset {name!r} could not be fetched: {_first_line(e)}") from None
    if isinstance(ds, dict):  # a DatasetDict: no split named
        if len(ds) != 1:
            raise UsageError(f"{spec}: dataset {name!r} has splits {', '.join(ds)}; name one as {name}:{config}:SPLIT")
        ds = next(iter(ds.values()))
    return list(ds.column_names), [_plain(dict(r)) for r in ds]


def _load(path: str | Path) -> tuple[str, list[str], list[dict]]:
    """(name for messages, column names, rows with null cells kept) of a table file or a hub id."""
    p = Path(path)
    if p.is_file():
        table = _arrow_table(p)
        return str(p), list(table.column_names), table.to_pylist()
    if looks_like_hub_id(path):
        columns, rows = _load_hub(str(path))
        return str(path), columns, rows
    raise UsageError(f"file not found: {p}")


def read_table_records(path: str | Path) -> list[tuple[str, dict]]:
    """Records of a Parquet / Arrow / Feather file or a hub dataset id as ("FILE: row i", dict) pairs, i from 1,
    null cells left out; an empty table is []."""
    name, _, rows = _load(path)
    return [(f"{name}: row {i}", {k: _plain(v) for k, v in r.items() if v is not None}) for i, r in enumerate(rows, 1)]


def _cell(v) -> str:
    """A cell as csv.DictReader would give it: "" for null, integral floats without ".0", lists/dicts as JSON."""
    v = _plain(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    return v if isinstance(v, str) else str(v)


def _columns(header: list) -> str:
    """Column names for a one-line message: quoted when not printable (a stray \\r), at most 20 of them."""
    shown = [c if isinstance(c, str) and c.isprintable() and c.strip() else repr(c) for c in header[:20]]
    return ", ".join(shown) + (f", ... ({len(header)} in all)" if len(header) > 20 else "")


def _read_csv(p: Path) -> tuple[list[str], list[dict]]:
    """(header, rows) of a UTF-8 CSV file; a row with fewer fields than the header, or more non-empty ones, is a
    UsageError naming the file and the line (its fields would land in the wrong columns)."""
    import csv
    import io

    from obliviate.data.schema import read_text

    reader = csv.DictReader(io.StringIO(read_text(p, "CSV file"), newline=""))
    rows = []
    try:
        header = list(reader.fieldnames or [])
        for row in reader:
            extra = [v for v in row.pop(None, []) if v.strip()]  # DictReader's restkey: fields past the header
            if extra or None in row.values():  # restval: fields the row lacks
                n = len(row) - list(row.values()).count(None) + len(extra)
                raise UsageError(
                    f"{p}:{reader.line_num}: {n} fields, but the header has {len(header)} ({_columns(header)})"
                )
            rows.append(row)
    except csv.Error as e:
        raise UsageError(f"{p}:{reader.line_num}: unreadable CSV ({e})") from None
    return header, rows


def read_table_rows(path: str | Path, required_columns: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a CSV, Parquet, Arrow, Feather, JSON-list or JSONL file (or a hub dataset id) as dicts of strings,
    like csv.DictReader's. A missing column, no rows or an unreadable file is a one-line UsageError naming the file.
    Files are told apart by suffix; any other suffix is read as CSV."""
    p = Path(path)
    suffix = p.suffix.lower()
    if table_format(p) or (not p.is_file() and looks_like_hub_id(path)):
        name, header, raw = _load(path)
        rows = [{k: _cell(r.get(k)) for k in header} for r in raw]
    elif suffix in (".json", ".jsonl"):
        from obliviate.data.schema import read_records

        name, header, rows = str(p), [], []
        for where, obj in read_records(p):
            if not isinstance(obj, dict):
                raise UsageError(f"{where}: expected an object, got {type(obj).__name__}")
            header += [k for k in obj if k not in header]
            rows.append(obj)
        rows = [{k: _cell(r.get(k)) for k in header} for r in rows]
    else:
        if not p.is_file():
            raise UsageError(f"file not found: {p}")
        name = str(p)
        header, rows = _read_csv(p)
    missing = [c for c in required_columns if c not in header]
    if missing:
        raise UsageError(f"{name}: missing column(s) {', '.join(missing)} (columns: {_columns(header)})")
    if not rows:
        raise UsageError(f"{name}: no rows")
    return rows
