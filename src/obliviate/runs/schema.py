"""The results.json schema as code: the document `obliviate.runs.results.results_document` builds, with the sections
that the demos and commands add to it.

`results.json` (`eval`, `refusal-eval`, `eval --suite diffusion`, every `demo`), `muse.json` (`muse`) and
`leaderboard.json` (`bench`) hold one such document. `RESULTS_SCHEMA` names every top-level key: its shape, whether
every document has it, and which commands write it. A document may leave out an optional key, never add one that is
not listed: a new section is added here (and to docs/outputs.md, which a test keeps equal to `schema_table()`).

- `validate_results(doc)`: one readable problem per line; an empty list means the document is valid;
- `check_results(path)`: reads a file and raises `UsageError` naming it and its first problem.

Standard library only, like the rest of `obliviate.runs`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Union

from obliviate.core.errors import UsageError


def _kind(v) -> str:
    """The JSON type of a value, with the value itself when it is short: "string '0.5'", "list", "null"."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, (int, float)):
        return f"number {v!r}"
    if isinstance(v, str):
        return f"string {v[:40]!r}" + ("..." if len(v) > 40 else "")
    return {dict: "object", list: "list"}.get(type(v), type(v).__name__)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_timestamp(v) -> bool:
    if not isinstance(v, str):
        return False
    try:
        return datetime.fromisoformat(v).tzinfo is not None
    except ValueError:
        return False


def _label(where: str) -> str:
    """A top-level key quoted ('created'); a path inside one as it is (results['npo']['forget_quality'])."""
    return where if "[" in where else repr(where)


class Spec:
    """The shape of one JSON value. `name` is how docs/outputs.md writes it, `phrase` how a problem does."""

    name: str

    @property
    def phrase(self) -> str:
        return f"an object {self.name}"

    def problems(self, value, where: str) -> list[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class Scalar(Spec):
    name: str  # "number"
    article: str  # "a number"
    test: Callable[[object], bool]

    @property
    def phrase(self) -> str:
        return self.article

    def problems(self, value, where: str) -> list[str]:
        return [] if self.test(value) else [f"{_label(where)} must be {self.phrase}, got {_kind(value)}"]


@dataclass(frozen=True)
class Nullable(Spec):
    inner: Spec

    @property
    def name(self) -> str:
        return f"{self.inner.name} or null"

    @property
    def phrase(self) -> str:
        return f"{self.inner.phrase} or null"

    def problems(self, value, where: str) -> list[str]:
        if value is None or not self.inner.problems(value, where):
            return []
        if isinstance(self.inner, Scalar):
            return [f"{_label(where)} must be {self.phrase}, got {_kind(value)}"]
        return self.inner.problems(value, where)


@dataclass(frozen=True)
class MapOf(Spec):
    """An object whose keys are names chosen by the writer (`key`: what they name) and whose values all have one
    shape; `required` keys must be there."""

    key: str
    value: Spec
    required: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{{{self.key}: {self.value.name}}}"

    def problems(self, value, where: str) -> list[str]:
        if not isinstance(value, dict):
            return [f"{_label(where)} must be {self.phrase}, got {_kind(value)}"]
        out = [f"{_label(where)} is missing {k!r}" for k in self.required if k not in value]
        for k, v in value.items():
            out += self.value.problems(v, f"{where}[{k!r}]")
        return out


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    length: int | None = None  # None: any length

    @property
    def name(self) -> str:
        return f"[{', '.join([self.item.name] * self.length)}]" if self.length else f"[{self.item.name}, ...]"

    @property
    def phrase(self) -> str:
        return f"a list {self.name}"

    def problems(self, value, where: str) -> list[str]:
        if not isinstance(value, list):
            return [f"{_label(where)} must be {self.phrase}, got {_kind(value)}"]
        if self.length is not None and len(value) != self.length:
            return [f"{_label(where)} must be {self.phrase}, got a list of {len(value)}"]
        return [p for i, v in enumerate(value) for p in self.item.problems(v, f"{where}[{i}]")]


@dataclass(frozen=True)
class Record(Spec):
    """An object with named fields (all of them required; other fields are allowed). No fields: any object."""

    fields: dict[str, Spec] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "{" + ", ".join(f"{k}: {s.name}" for k, s in self.fields.items()) + "}" if self.fields else "object"

    @property
    def phrase(self) -> str:
        return f"an object {self.name}" if self.fields else "an object"

    def problems(self, value, where: str) -> list[str]:
        if not isinstance(value, dict):
            return [f"{_label(where)} must be {self.phrase}, got {_kind(value)}"]
        out = []
        for k, spec in self.fields.items():
            out += spec.problems(value[k], f"{where}[{k!r}]") if k in value else [f"{_label(where)} is missing {k!r}"]
        return out


STRING = Scalar("string", "a non-empty string", lambda v: isinstance(v, str) and v != "")
NUMBER = Scalar("number", "a number", _is_number)  # NaN too: json writes it as NaN, and a reader takes it back
NON_NEGATIVE = Scalar("seconds", "a number >= 0", lambda v: _is_number(v) and not v < 0)
COUNT = Scalar("count", "a whole number >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0)
BOOLEAN = Scalar("boolean", "a boolean", lambda v: isinstance(v, bool))
TIMESTAMP = Scalar("timestamp", "an ISO 8601 time with a time zone", _is_timestamp)
OBJECT = Record()
# a figure's n and bootstrap interval (`obliviate.metrics.intervals`)
INTERVAL = Record(
    {
        "value": Nullable(NUMBER),
        "n": COUNT,
        "samples": COUNT,
        "lo": Nullable(NUMBER),
        "hi": Nullable(NUMBER),
        "level": NUMBER,
        "method": STRING,
    }
)


@dataclass(frozen=True)
class Key:
    """One top-level key of the document. `per_run`: its keys are run names, each one a run of `results`."""

    name: str
    spec: Spec
    required: bool
    written_by: str
    per_run: bool = False


RESULTS_SCHEMA: tuple[Key, ...] = (
    Key("obliviate_version", STRING, True, "every document"),
    Key("created", TIMESTAMP, True, "every document"),
    Key("config", OBJECT, True, "every document: the command's settings"),
    Key("git", Nullable(STRING), True, "every document: the obliviate checkout's commit"),
    Key("versions", MapOf("package", STRING, required=("python",)), True, "every document"),
    Key("results", MapOf("run", MapOf("metric", Nullable(NUMBER))), True, "every document"),
    Key(
        "higher_is_better",
        MapOf("metric", Nullable(BOOLEAN)),
        True,
        "every document: each registered metric of `results`",
    ),
    Key("n_samples", MapOf("split", COUNT), True, "every document"),
    Key(
        "seconds",
        MapOf("run", NON_NEGATIVE),
        False,
        "`demo` (world, refusal, real): training time per run",
        per_run=True,
    ),
    Key("wall_seconds", NON_NEGATIVE, False, "every `demo`, `bench`, `muse`"),
    Key(
        "refusal_positions",
        MapOf("run", MapOf("bucket", NUMBER)),
        False,
        "`demo --suite refusal`, `refusal-eval`",
        per_run=True,
    ),
    Key(
        "intervals",
        MapOf("run", MapOf("metric", INTERVAL)),
        False,
        "`refusal-eval`, `eval`: each rate's n and 95% bootstrap interval over prompts",
        per_run=True,
    ),
    Key(
        "by_source",
        MapOf("run", MapOf("kind", MapOf("source", NUMBER))),
        False,
        "`demo --suite real`, `refusal-eval` on public prompt sets",
        per_run=True,
    ),
    Key(
        "by_category",
        MapOf("run", MapOf("kind", MapOf("category", NUMBER))),
        False,
        "`demo --suite real`, `refusal-eval` on public prompt sets",
        per_run=True,
    ),
    Key("relearn", MapOf("run", OBJECT), False, "`demo --suite real`: the relearning attack's figures", per_run=True),
    Key("refusal_direction", OBJECT, False, "`demo --suite real`: the ablated refusal direction"),
    Key(
        "over_seeds",
        MapOf("run", MapOf("metric", ListOf(NUMBER, 2))),
        False,
        "`demo --suite real` with several DeRTa seeds: [mean, std] over them",
        per_run=True,
    ),
    Key(
        "attacks",
        MapOf("run", MapOf("attack", OBJECT)),
        False,
        "`demo --suite real --attacks`: the named audit attacks' figures on a run",
        per_run=True,
    ),
    Key(
        "base",
        Record({"steps": COUNT, "train_seconds": NON_NEGATIVE, "factor_accuracy": MapOf("factor", NUMBER)}),
        False,
        "`demo --suite diffusion`: the base model",
    ),
    Key(
        "audit",
        MapOf(
            "run",
            Record(
                {
                    "concept": STRING,
                    "factor": STRING,
                    "prompts": ListOf(STRING),
                    "pre_asr": NUMBER,
                    "attacks": MapOf("attack", OBJECT),
                    "skipped": MapOf("attack", STRING),
                }
            ),
        ),
        False,
        "`demo --suite diffusion`: the attacks on each erasure",
        per_run=True,
    ),
    Key("curves", MapOf("run", MapOf("curve", ListOf(NUMBER))), False, "`muse`: the KnowMem-r curves", per_run=True),
    Key(
        "collapse",
        MapOf("run", ListOf(STRING)),
        False,
        "`eval`: each run's collapse alarms (fluency or privleak beyond its threshold); [] when none",
        per_run=True,
    ),
    Key(
        "leaderboard",
        MapOf("split", MapOf("method", MapOf("column", ListOf(NUMBER, 2)))),
        False,
        "`bench`: [mean, std] over seeds",
    ),
)
KEYS = {k.name: k for k in RESULTS_SCHEMA}


def validate_results(doc: dict) -> list[str]:
    """Every way `doc` departs from `RESULTS_SCHEMA`, one readable line each; [] when it is a valid document."""
    if not isinstance(doc, dict):
        return [f"the document must be a JSON object, got {_kind(doc)}"]
    out = [f"missing required key {k.name!r}" for k in RESULTS_SCHEMA if k.required and k.name not in doc]
    out += [
        f"unknown key {name!r}: not in the results.json schema (obliviate.runs.schema)"
        for name in doc
        if name not in KEYS
    ]
    for name, value in doc.items():
        if name in KEYS:
            out += KEYS[name].spec.problems(value, name)
    results = doc.get("results")
    if not isinstance(results, dict):
        return out
    metrics = {m for r in results.values() if isinstance(r, dict) for m in r}
    out += [
        f"higher_is_better[{m!r}] names no metric of any run in 'results'"
        for m in (doc.get("higher_is_better") if isinstance(doc.get("higher_is_better"), dict) else {})
        if m not in metrics
    ]
    for key in RESULTS_SCHEMA:
        section = doc.get(key.name)
        if key.per_run and isinstance(section, dict):
            out += [f"{key.name}[{run!r}] names no run of 'results'" for run in section if run not in results]
    return out


def check_results(path: Union[str, Path]) -> dict:
    """The results document in `path`, when it is valid; otherwise a UsageError naming the file and its first
    problem (and how many more there are)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:  # ValueError: not JSON, or not UTF-8
        raise UsageError(f"{path}: not valid JSON ({e})") from None
    problems = validate_results(doc)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UsageError(f"{path}: {problems[0]}{more}")
    return doc


def schema_table() -> str:
    """The Markdown table of `RESULTS_SCHEMA` that docs/outputs.md shows (a test keeps the page equal to it)."""
    rows = ["| key | shape | required | written by |", "| --- | --- | --- | --- |"]
    rows += [
        f"| `{k.name}` | `{k.spec.name}` | {'yes' if k.required else 'no'} | {k.written_by} |" for k in RESULTS_SCHEMA
    ]
    return "\n".join(rows)
