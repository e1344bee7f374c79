"""Shared parts of the fuzz tests (tests/test_fuzz_*.py): bounded settings, the property, and strategies that
draw files near a format (valid documents of random shapes, then damaged) as well as raw bytes.

The property (`holds`): a reader returns, or raises a UsageError with a one-line message (the CLI's exit 2); never
any other exception. Examples are bounded and derandomized, so the fuzz tests run in well under a minute and the
same in every CI run; OBLIVIATE_FUZZ_SCALE=10 draws ten times as many (and random ones) to look further.
"""

from __future__ import annotations

import codecs
import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

from obliviate.core.errors import UsageError

SCALE = int(os.environ.get("OBLIVIATE_FUZZ_SCALE", "1"))


def bounded(n: int):
    return settings(
        max_examples=n * SCALE,
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )


def holds(read, *args, **kwargs):
    """The property: `read` returns, or raises a UsageError of one non-empty line. Which of the two is recorded as
    a hypothesis event (pytest --hypothesis-show-statistics shows how many examples were read, how many refused)."""
    name = getattr(read, "__name__", "read")
    try:
        out = read(*args, **kwargs)
    except UsageError as e:
        msg = str(e)
        assert msg.strip() and "\n" not in msg and "\r" not in msg, repr(msg)
        event(f"{name}: UsageError")
        return None
    event(f"{name}: read")
    return out


@pytest.fixture
def scratch(tmp_path):
    """A fresh directory per example (hypothesis runs many examples in one test call)."""
    n = [0]

    def new() -> Path:
        n[0] += 1
        d = tmp_path / f"ex{n[0]}"
        d.mkdir()
        return d

    return new


# --- strategies ------------------------------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["", " ", "\u2028", "a\nb", "\x00", "\ufeff"])
)


def json_values(keys=(), leaves: int = 12):
    key = (st.sampled_from(list(keys)) | st.text(max_size=6)) if keys else st.text(max_size=6)
    return st.recursive(
        SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(key, c, max_size=5), max_leaves=leaves
    )


def sometimes_other(v, keys=()):
    """Mostly `v`; one time in ten any JSON value instead."""
    return st.integers(0, 9).flatmap(lambda i: json_values(keys) if i == 9 else v)


def objects(fields: dict, keys=(), required=()):
    """Objects with the `required` fields and some of the others (name -> strategy), a field now and then of
    another JSON type, and now and then unknown keys."""
    return st.fixed_dictionaries(
        {k: sometimes_other(v, keys) for k, v in fields.items() if k in required},
        optional={k: sometimes_other(v, keys) for k, v in fields.items() if k not in required},
    ).flatmap(
        lambda d: st.dictionaries(st.text(max_size=5), json_values(keys, 4), max_size=2).map(lambda extra: extra | d)
    )


def dumps(v) -> str:
    return json.dumps(v, ensure_ascii=False)  # NaN and Infinity written as JSON5 does: Python reads them back


@st.composite
def json_text(draw, doc, many: bool = True):
    """One document, a JSON list of documents or JSONL lines of them (with odd line ends)."""
    if not many:
        return dumps(draw(doc))
    docs = draw(st.lists(doc, max_size=4))
    if draw(st.booleans()):
        return dumps(docs)
    return "".join(dumps(d) + draw(st.sampled_from(["\n", "\r\n", "\r", "\n\n", " \n"])) for d in docs)


SPECIAL = st.sampled_from(
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 5000 + "1" + "}" * 5000,
        "[" * 990 + "]" * 990,
        '{"question": "q", "answer": "a"}\n' + "[" * 50_000 + "\n",
        "1" * 5000,
        '{"question": ' + "9" * 4400 + "}",
        "NaN",
        "[NaN, Infinity]",
        "\ufeff[]",
        "\x00",
        "",
        "\n\n",
        '{"question": "q", "answer": "a"}\r{"x": 1}',
        '{"question": "q\u2028", "answer": "a"}\n',
    ]
)


@st.composite
def mutated(draw, text):
    """Bytes of `text` (a strategy of str), sometimes damaged: truncated, a byte inserted or replaced, a BOM,
    bytes that are not UTF-8 after the first 4,096 characters."""
    data = draw(text).encode("utf-8")
    how = draw(st.sampled_from(["keep", "keep", "truncate", "insert", "replace", "bom", "late-byte"]))
    if how == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "insert":
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(min_size=1, max_size=3)) + data[i:]
    elif how == "replace" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    elif how == "bom":
        data = codecs.BOM_UTF8 + data
    elif how == "late-byte":
        data = data + b"\n" + b" " * 4100 + b"\xe9\n"
    return data


def file_bytes(text):
    """Bytes of a file: half the time `text` as written, else damaged, a special case or any bytes."""
    clean = text.map(str.encode)
    return st.one_of(clean, clean, clean, mutated(text), mutated(SPECIAL), st.binary(max_size=200))


@st.composite
def safetensors_bytes(draw):
    """A safetensors file with tensors a guard may expect (or not), often damaged; or nothing."""
    import torch
    from safetensors.torch import save

    how = draw(st.sampled_from(["none", "valid", "valid", "truncated", "garbage", "header"]))
    if how == "none":
        return None
    if how == "garbage":
        return draw(st.binary(max_size=64))
    if how == "header":  # a header length that points past the end, or a header that is not JSON
        return struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + draw(st.binary(max_size=32))
    names = draw(st.lists(st.sampled_from(["centroids", "probe", "scores", "weight", "x"]), max_size=3, unique=True))
    shapes = [draw(st.lists(st.integers(0, 3), max_size=3)) for _ in names]
    data = save({n: torch.zeros(s) for n, s in zip(names, shapes)})
    if how == "truncated":
        data = data[: draw(st.integers(0, len(data)))]
    return data
