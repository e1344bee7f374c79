"""Shape checks of the files `obliviate report` reads, before any figure is drawn from them.

Each check walks the parts of a document that the page and its figures use, and raises a one-line UsageError
that names the file and the key (`results['target']`) when a part has another JSON type than the one written by
obliviate. Parts that the figures already skip when malformed (a metric that is not a number) are left alone.
"""

from __future__ import annotations

import math
from pathlib import Path

from obliviate.core.errors import UsageError

_NAMES = {dict: "an object", list: "a list"}


def _type(v) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(v), "number")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v) -> bool:
    return _number(v) and math.isfinite(v)


def _fail(f: Path, where: str, expected: str, v) -> UsageError:
    return UsageError(f"{f}: {where} must be {expected}, got {_type(v)}")


def _part(doc: dict, key: str, kind: type, f: Path, where: str = "", nullable: bool = True) -> dict | list | None:
    """doc[key] when it has type `kind`; None when absent (or null, where the page reads null as absent);
    anything else is a UsageError."""
    if key not in doc or (doc[key] is None and nullable):
        return None
    v = doc[key]
    if not isinstance(v, kind):
        raise _fail(f, f"{where}[{key!r}]" if where else repr(key), _NAMES[kind], v)
    return v


def _objects(parent: dict | None, f: Path, where: str) -> None:
    """Every value of `parent` is an object."""
    for k, v in (parent or {}).items():
        if not isinstance(v, dict):
            raise _fail(f, f"{where}[{k!r}]", "an object", v)


def check_results(doc: dict, f: Path) -> None:
    """results.json / muse.json / leaderboard.json: "results" maps runs to objects of metrics, "config",
    "versions", "relearn" and "intervals" are objects, "higher_is_better" maps metrics to true / false / null, and a
    diffusion run's "audit" holds objects of attacks whose "asr" is a finite number or null."""
    _objects(_part(doc, "results", dict, f), f, "results")
    for key in ("config", "relearn", "intervals"):  # an interval the page cannot read is left out, not an error
        _part(doc, key, dict, f)
    for k, v in (_part(doc, "higher_is_better", dict, f) or {}).items():
        if v is not None and not isinstance(v, bool):
            raise _fail(f, f"higher_is_better[{k!r}]", "true, false or null", v)
    for run, a in (_part(doc, "audit", dict, f) or {}).items():
        attacks = a.get("attacks") if isinstance(a, dict) else None
        where = f"audit[{run!r}]['attacks']"
        if isinstance(attacks, dict):
            _objects(attacks, f, where)
            for name, r in attacks.items():
                if r.get("asr") is not None and not _finite(r["asr"]):
                    raise _fail(f, f"{where}[{name!r}]['asr']", "a finite number or null", r["asr"])


def check_audit(doc: dict, f: Path) -> None:
    """audit.json: "attacks" maps attacks to objects whose "model" / "oracle" / "target" are objects of figures,
    "skipped" is an object, and a diffusion audit's "pre_asr" is a finite number."""
    attacks = _part(doc, "attacks", dict, f)
    _objects(attacks, f, "attacks")
    for name, entry in (attacks or {}).items():
        for role in ("model", "oracle", "target"):
            _part(entry, role, dict, f, f"attacks[{name!r}]", nullable=False)
    _part(doc, "skipped", dict, f)
    if "pre_asr" in doc and not _finite(doc["pre_asr"]):
        raise _fail(f, "'pre_asr'", "a finite number", doc["pre_asr"])


def check_calibration(doc: dict, f: Path) -> None:
    """calibration.json, when it holds a curve ("tau", "refusal_rate" and "over_refusal_rate" non-empty lists):
    lists of finite numbers, one per tau."""
    keys = ("tau", "refusal_rate", "over_refusal_rate")
    curves = [doc.get(k) for k in keys]
    if not all(isinstance(c, list) and c for c in curves):
        return  # no curve: the page draws none
    for key, values in zip(keys, curves):
        for i, v in enumerate(values):
            if not _finite(v):
                raise _fail(f, f"{key}[{i}]", "a finite number", v)
    if len({len(c) for c in curves}) > 1:
        raise UsageError(
            f"{f}: 'tau', 'refusal_rate' and 'over_refusal_rate' must have one value per tau "
            f"(lengths {', '.join(str(len(c)) for c in curves)})"
        )


def check_sweep(doc: dict, f: Path) -> None:
    """sweep.json: "points" is a list of objects whose "metrics" and "options" are objects."""
    points = _part(doc, "points", list, f, nullable=False) or []
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            raise _fail(f, f"points[{i}]", "an object", p)
        for key in ("metrics", "options"):
            _part(p, key, dict, f, f"points[{i}]", nullable=False)


CHECKS = {
    "results.json": check_results,
    "muse.json": check_results,
    "leaderboard.json": check_results,
    "audit.json": check_audit,
    "calibration.json": check_calibration,
    "sweep.json": check_sweep,
}


def check_document(doc, f: Path) -> dict:
    """`doc` (read from the results file `f`), checked: a JSON object of the shape its file name says."""
    if not isinstance(doc, dict):
        raise UsageError(f"{f} is not a JSON object")
    _part(doc, "versions", dict, Path(f))
    CHECKS.get(Path(f).name, lambda d, p: None)(doc, Path(f))
    return doc


# the keys of a samples.jsonl row that group rows (run, split, kind, set): scalars, never lists or objects
GROUP_KEYS = ("run", "split", "kind", "set")


def check_sample(row, f: Path, line: int) -> None:
    for key in GROUP_KEYS:
        if isinstance(row, dict) and isinstance(row.get(key), (list, dict)):
            raise _fail(f, f"line {line}: {key!r}", "a string, a number or null", row[key])


def check_guard(doc, f: Path) -> None:
    """A run directory's guards/NAME/guard.json: an object (its "report", the fit figures, is shown when it is
    an object)."""
    if not isinstance(doc, dict):
        raise UsageError(f"{f} is not a JSON object")
