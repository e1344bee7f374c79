"""Fuzzed readers of the user's data files: JSON / JSONL / CSV / Parquet / Arrow / Feather records, prompt files
and --since. Whatever a file holds, reading it succeeds or ends in a one-line UsageError (tests/fuzzing.py)."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import (
    bounded,
    file_bytes,
    holds,
    json_text,
    objects,
    scratch,  # noqa: F401 (a fixture)
)

# --- JSON / JSONL records: data/schema.py ------------------------------------------------------------------------

QA_KEYS = (
    "question",
    "answer",
    "paraphrased_answer",
    "perturbed_answer",
    "alternate_answers",
    "id",
    "subject",
    "attribute",
    "value",
    "text",
)
QA = objects(
    {
        "question": st.text(min_size=1, max_size=8),
        "answer": st.text(min_size=1, max_size=8),
        "text": st.text(min_size=1, max_size=8),
        "perturbed_answer": st.lists(st.text(max_size=5), max_size=3) | st.text(max_size=5),
        "paraphrased_answer": st.text(max_size=5),
        "alternate_answers": st.lists(st.text(max_size=5), max_size=2),
        "id": st.text(max_size=4) | st.integers(),
    },
    QA_KEYS,
    required=("question", "answer"),
)


def _schema_reader(name):
    from obliviate.data import schema

    return {
        "load_qa": schema.load_qa,
        "load_texts": schema.load_texts,
        "load_lines": schema.load_lines,
        "read_records": schema.read_records,
        "read_jsonl": schema.read_jsonl,
        "read_json": schema.read_json,
    }[name]


@pytest.mark.parametrize("reader", ["load_qa", "load_texts", "load_lines", "read_records", "read_jsonl", "read_json"])
@bounded(40)
@given(data=file_bytes(json_text(QA)), suffix=st.sampled_from([".jsonl", ".json", ".txt", ""]))
def test_json_records(scratch, reader, data, suffix):
    f = scratch() / f"split{suffix}"
    f.write_bytes(data)
    holds(_schema_reader(reader), f)


# --- tables: CSV, Parquet, Arrow, Feather: data/tables.py ------------------------------------------------------

PROMPT_COLUMNS = (
    "prompt",
    "label",
    "type",
    "id",
    "goal",
    "target",
    "Behavior",
    "BehaviorID",
    "ContextString",
    "SemanticCategory",
    "Goal",
    "Target",
    "Index",
    "Category",
    "category",
    "question",
    "answer",
)
CELL = st.text(max_size=8) | st.sampled_from(["safe", "unsafe", '"', 'a,"b', "x\ny", "", "\x00"])
LABEL = st.sampled_from(["safe", "unsafe"])  # xstest's label column


@st.composite
def csv_text(draw, required=()):
    """A CSV file: the `required` columns and others in any order, rows of about the header's length."""
    extra = draw(st.lists(st.sampled_from(PROMPT_COLUMNS) | st.text(max_size=4), max_size=3))
    header = draw(st.permutations(list(dict.fromkeys([*required, *extra])) or ["x"]))

    def row(n):  # a row of the header's length, now and then one or two cells more or fewer
        n = max(0, n + (draw(st.integers(-2, 2)) if draw(st.integers(0, 4)) == 4 else 0))
        return [draw(LABEL if i < len(header) and header[i] == "label" else CELL) for i in range(n)]

    rows = [row(len(header)) for _ in range(draw(st.integers(1, 4)))]
    buf = io.StringIO()
    if draw(st.booleans()):
        w = csv.writer(buf, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
        w.writerow(header)
        w.writerows(rows)
    else:  # written by hand: no quoting
        buf.write("\n".join(",".join(r) for r in [header, *rows]))
    return buf.getvalue()


COLUMN_TYPES = {
    "string": st.text(min_size=1, max_size=6),
    "int": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(),
    "bool": st.booleans(),
    "list": st.lists(st.text(max_size=4), max_size=3),
    "binary": st.binary(max_size=4),
    "struct": st.fixed_dictionaries({"a": st.text(max_size=3)}),
    "null": st.none(),
}


@st.composite
def table_bytes(draw):
    """A Parquet, Feather or Arrow (file or stream) table with columns of any type, often damaged."""
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    base = draw(st.sampled_from([["question", "answer"], ["prompt"], []]))
    names = list(dict.fromkeys(base + draw(st.lists(st.sampled_from(QA_KEYS + PROMPT_COLUMNS), max_size=3))))
    n = draw(st.integers(0, 3) if draw(st.integers(0, 4)) == 4 else st.integers(1, 3))
    cols = {}
    for name in names:
        typed = name in base and draw(st.integers(0, 4)) < 4  # the columns a reader needs: mostly strings
        kind = "string" if typed else draw(st.sampled_from(list(COLUMN_TYPES)))
        cols[name] = draw(st.lists(COLUMN_TYPES[kind] | st.none(), min_size=n, max_size=n))
    try:
        table = pa.table(cols) if cols else pa.table({"x": pa.array([], pa.int64())}).select([])
    except (pa.ArrowException, ValueError, OverflowError):
        table = pa.table({"question": ["q"] * n})
    buf = io.BytesIO()
    fmt = draw(st.sampled_from(["parquet", "feather", "arrow", "stream"]))
    if fmt == "parquet":
        pq.write_table(table, buf)
    elif fmt == "feather":
        feather.write_feather(table, buf)
    elif fmt == "arrow":
        with ipc.new_file(buf, table.schema) as w:
            w.write_table(table)
    else:
        with ipc.new_stream(buf, table.schema) as w:
            w.write_table(table)
    data = buf.getvalue()
    how = draw(st.sampled_from(["keep", "keep", "truncate", "replace", "garbage"]))
    if how == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "replace" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    elif how == "garbage":
        data = data[:4] + draw(st.binary(max_size=64))
    return data


@bounded(40)
@given(data=st.data(), required=st.lists(st.sampled_from(PROMPT_COLUMNS), max_size=2, unique=True))
def test_csv_rows(scratch, data, required):
    from obliviate.data.tables import read_table_rows

    f = scratch() / "prompts.csv"
    f.write_bytes(data.draw(file_bytes(csv_text(required)), "content"))
    holds(read_table_rows, f, tuple(required))


@pytest.mark.parametrize("reader", ["load_qa", "read_table_rows", "read_records"])
@bounded(40)
@given(data=table_bytes(), suffix=st.sampled_from([".parquet", ".arrow", ".feather", ""]))
def test_tables(scratch, reader, data, suffix):
    from obliviate.data.schema import load_qa, read_records
    from obliviate.data.tables import read_table_rows

    f = scratch() / f"split{suffix}"
    f.write_bytes(data)
    read = {
        "load_qa": load_qa,
        "read_records": read_records,
        "read_table_rows": lambda p: read_table_rows(p, ("question",)),
    }[reader]
    holds(read, f)


# --- prompt files: data/prompts.py -----------------------------------------------------------------------------

PAST_TENSE = objects(
    {
        "jb_artifacts": st.lists(
            objects(
                {"request": st.text(min_size=1, max_size=6), "request_reformulated": st.text(min_size=1, max_size=6)},
                required=("request", "request_reformulated"),
            ),
            min_size=1,
            max_size=3,
        ),
        "attack": st.sampled_from(["past", "future"]),
    },
    required=("jb_artifacts",),
)
PROMPT_REQUIRED = {
    "xstest": ("prompt", "label"),
    "harmbench": ("Behavior",),
    "jailbreakbench": ("Goal",),
    "advbench": ("goal",),
    "orbench": ("prompt",),
    "coconot": ("prompt",),
}


@pytest.mark.parametrize(
    "kind", ["xstest", "harmbench", "jailbreakbench", "advbench", "orbench", "coconot", "past_tense"]
)
@bounded(30)
@given(data=st.data())
def test_prompt_files(scratch, kind, data):
    from obliviate.data.prompts import load_prompts

    suffix = data.draw(st.sampled_from([".csv", ".jsonl", ".json", ".parquet"]), "suffix")
    if kind == "past_tense":
        content = data.draw(file_bytes(json_text(PAST_TENSE, many=False)), "content")
    elif suffix == ".parquet":
        content = data.draw(table_bytes(), "content")
    elif suffix == ".csv":
        content = data.draw(file_bytes(csv_text(PROMPT_REQUIRED[kind])), "content")
    else:
        content = data.draw(
            file_bytes(
                json_text(objects({c: CELL for c in PROMPT_COLUMNS}, PROMPT_COLUMNS, required=PROMPT_REQUIRED[kind]))
            ),
            "content",
        )
    f = scratch() / f"{kind}{suffix}"
    f.write_bytes(content)
    rows = holds(load_prompts, kind, f)
    for r in rows or []:  # what a prompt file gives is the prompt schema, whatever the file held
        assert isinstance(r["prompt"], str) and r["label"] in ("harmful", "benign")
        assert all(isinstance(r[k], str) for k in ("id", "category", "context", "target"))


# --- the run registry's --since ---------------------------------------------------------------------------------


@bounded(100)
@given(
    text=st.text(max_size=30)
    | st.from_regex(r"\s*[0-9]{1,20}(\.[0-9]{1,3})?\s*[mhdw]\s*", fullmatch=True)
    | st.datetimes().map(lambda t: t.isoformat())
    | st.sampled_from(["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
)
def test_runs_since(text):
    from obliviate.cli.runs import parse_since

    holds(parse_since, text)


def test_arrow_file_whose_strings_are_not_utf8(tmp_path):
    """Found by the fuzzer: reading an IPC file checks its layout only, and converting a damaged string column to
    Python rows failed with UnicodeDecodeError (or SystemError for a bad offset); the full validation refuses it."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from obliviate.core.errors import UsageError
    from obliviate.data.schema import load_qa

    buf = io.BytesIO()
    table = pa.table({"question": ["qqqqqq"], "answer": ["zzzzzz"]})
    with ipc.new_stream(buf, table.schema) as w:
        w.write_table(table)
    f = tmp_path / "split.arrow"
    f.write_bytes(buf.getvalue().replace(b"zzzzzz", b"\xff\xfe\xfd\xff\xfe\xfd"))
    with pytest.raises(UsageError, match="unreadable Arrow file"):
        load_qa(f)
