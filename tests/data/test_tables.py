"""Data as it is published: Parquet, Arrow (IPC file and stream), Feather and HF dataset ids read like JSON/JSONL."""

import json
import os
import socket
import sys
import time
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from obliviate.core.errors import UsageError
from obliviate.data.prompts import load_prompts, read_csv
from obliviate.data.schema import load_qa, load_texts, read_records
from obliviate.data.tables import looks_like_hub_id, read_table_records, read_table_rows
from tests.cli.test_cli import run_cli
from tests.conftest import shared_data


def jsonl_rows(path):
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def write_parquet(rows, path):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_arrow(rows, path, stream):
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(path), "wb") as sink:
        with (ipc.new_stream if stream else ipc.new_file)(sink, table.schema) as w:
            w.write_table(table)
    return path


def test_parquet_and_arrow_equal_jsonl(world_dir, tmp_path):
    src = world_dir / "forget10.jsonl"
    rows = jsonl_rows(src)
    want = load_qa(src)
    assert load_qa(write_parquet(rows, tmp_path / "f.parquet")) == want
    assert load_qa(write_arrow(rows, tmp_path / "file.arrow", stream=False)) == want
    assert load_qa(write_arrow(rows, tmp_path / "stream.arrow", stream=True)) == want  # datasets.save_to_disk
    feather.write_feather(pa.Table.from_pylist(rows), tmp_path / "f.feather")
    assert load_qa(tmp_path / "f.feather") == want
    where, first = read_records(tmp_path / "f.parquet")[0]
    assert where == f"{tmp_path / 'f.parquet'}: row 1" and first == rows[0]
    assert type(first["perturbed_answer"]) is list and all(type(p) is str for p in first["perturbed_answer"])


def test_null_cells_read_as_absent_fields(tmp_path):
    """A column store writes a field some rows lack as null; those rows read like JSONL rows without the field."""
    rows = [
        {"question": "q1", "answer": "a1", "perturbed_answer": ["w"], "paraphrased_answer": "p"},
        {"question": "q2", "answer": "a2"},
    ]
    items = load_qa(write_parquet(rows, tmp_path / "n.parquet"))
    assert items[1].perturbed_answer == [] and items[1].paraphrased_answer == ""
    assert load_texts(write_parquet([{"text": "doc one"}, {"text": "doc two"}], tmp_path / "t.parquet")) == [
        "doc one",
        "doc two",
    ]


def test_suite_finds_parquet_and_arrow(world_dir, tmp_path):
    """A data directory exported to Parquet / Arrow works with --suite (the named .jsonl missing)."""
    from obliviate.benchmarks.layouts import SUITES

    world = SUITES.get("world")
    for name in ("forget10", "retain90", "retain_eval", "world_facts"):
        write_parquet(jsonl_rows(world_dir / f"{name}.jsonl"), tmp_path / f"{name}.parquet")
    write_arrow(jsonl_rows(world_dir / "holdout.jsonl"), tmp_path / "holdout.arrow", stream=True)
    assert world.train_paths(tmp_path, "forget10") == (tmp_path / "forget10.parquet", tmp_path / "retain90.parquet")
    got, want = world.eval_data(tmp_path, "forget10"), world.eval_data(world_dir, "forget10")
    assert got.keys() == want.keys() and all(got[k] == want[k] for k in want)
    muse = SUITES.get("muse")
    (tmp_path / "raw").mkdir()
    write_parquet([{"text": "a"}], tmp_path / "raw" / "forget.parquet")
    write_arrow([{"text": "b"}], tmp_path / "raw" / "retain1.arrow", stream=False)
    assert muse.train_paths(tmp_path, "forget10") == (tmp_path / "raw/forget.parquet", tmp_path / "raw/retain1.arrow")
    assert world.train_paths(tmp_path / "raw", "forget10")[0] == tmp_path / "raw" / "forget10.jsonl"  # none there


def test_wmdp_parquet(tmp_path):
    from obliviate.benchmarks.wmdp import load_mc

    rows = [{"question": "Which?", "choices": ["a", "b", "c", "d"], "answer": 2}]
    got = load_mc(write_parquet(rows, tmp_path / "wmdp.parquet"))
    assert got == rows and type(got[0]["answer"]) is int


def test_prompt_sets_from_parquet_arrow_jsonl(tmp_path):
    xstest = shared_data("xstest/xstest_prompts.csv")
    want = load_prompts("xstest", xstest)
    table = pcsv.read_csv(xstest)  # `id` becomes int64, as a CSV -> Parquet conversion makes it
    pq.write_table(table, tmp_path / "xs.parquet")
    assert load_prompts("xstest", tmp_path / "xs.parquet") == want
    write_arrow(table.to_pylist(), tmp_path / "xs.arrow", stream=True)
    assert load_prompts("xstest", tmp_path / "xs.arrow") == want
    (tmp_path / "xs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    assert load_prompts("xstest", tmp_path / "xs.jsonl") == want
    assert read_csv(tmp_path / "xs.parquet", ("prompt",))[0]["id"] == "1"


def test_prompt_columns_and_empty(tmp_path):
    write_parquet([{"question": "q", "label": "safe"}], tmp_path / "x.parquet")
    with pytest.raises(UsageError, match=r"x\.parquet: missing column\(s\) prompt \(columns: question, label\)"):
        load_prompts("xstest", tmp_path / "x.parquet")
    pq.write_table(
        pa.table({"prompt": pa.array([], pa.string()), "label": pa.array([], pa.string())}), tmp_path / "e.parquet"
    )
    with pytest.raises(UsageError, match=r"e\.parquet: no rows"):
        read_table_rows(tmp_path / "e.parquet", ("prompt",))
    assert read_table_records(tmp_path / "e.parquet") == []
    with pytest.raises(UsageError, match="empty"):
        load_qa(tmp_path / "e.parquet")


def test_missing_field_names_file_and_row(world_dir, tmp_path):
    rows = jsonl_rows(world_dir / "forget10.jsonl")[:3]
    for r in rows:
        del r["answer"]
    bad = write_parquet(rows, tmp_path / "noanswer.parquet")
    with pytest.raises(UsageError) as e:
        load_qa(bad)
    assert str(e.value).startswith(f"{bad}: row 1: field 'answer'") and "\n" not in str(e.value)
    rows = jsonl_rows(world_dir / "forget10.jsonl")[:3]
    rows[1]["question"] = " "
    with pytest.raises(UsageError, match=r"q\.parquet: row 2: field 'question'"):
        load_qa(write_parquet(rows, tmp_path / "q.parquet"))


@pytest.mark.parametrize("name", ["junk.parquet", "junk.arrow", "junk.feather"])
def test_corrupt_file_is_one_line(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(os.urandom(512))
    with pytest.raises(UsageError) as e:
        read_records(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: unreadable") and "\n" not in msg
    with pytest.raises(UsageError, match="unreadable"):
        read_table_rows(p, ("prompt",))


def test_hub_id_syntax(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert looks_like_hub_id("cais/wmdp") and looks_like_hub_id("cais/wmdp:wmdp-bio:test")
    assert looks_like_hub_id("muse-bench/MUSE-News:knowmem") and looks_like_hub_id("o/n::train")
    for local in ("data/forget", "x/forget.parquet", "x/f.jsonl", "./a/b", "/a/b", "a/b/c", "a", "a/b:c:d:e"):
        assert not looks_like_hub_id(local), local
    with pytest.raises(UsageError, match="file not found: data/forget"):
        read_records("data/forget")


def test_hub_id_offline_fails_fast_without_network(monkeypatch):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    attempts = []

    def no_connect(self, *a, **k):
        attempts.append(a)
        raise OSError("network attempted")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    t0 = time.monotonic()
    for spec in ("obliviate-test/no-such-dataset", "cais/wmdp:wmdp-bio:test"):
        with pytest.raises(UsageError) as e:
            read_records(spec)
        assert "could not be fetched" in str(e.value) and spec in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(UsageError, match="could not be fetched"):
            read_table_rows(spec, ("prompt",))
    assert not attempts and time.monotonic() - t0 < 30


def test_hub_id_through_datasets(monkeypatch, tmp_path):
    """With `datasets` installed: OWNER/NAME[:CONFIG[:SPLIT]] goes to load_dataset; one split is taken as is."""
    calls = []

    class FakeDataset(list):
        column_names = ["question", "choices", "answer"]

    rows = FakeDataset([{"question": "Which?", "choices": ["a", "b"], "answer": 1}])

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return rows if split else {"test": rows} if config == "one" else {"dev": rows, "test": rows}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    from obliviate.benchmarks.wmdp import load_mc

    assert load_mc("cais/wmdp:wmdp-bio:test") == list(rows)
    assert read_records("cais/wmdp:one") == [("cais/wmdp:one: row 1", rows[0])]
    with pytest.raises(UsageError, match=r"has splits dev, test; name one as cais/wmdp:two:SPLIT"):
        read_records("cais/wmdp:two")
    assert calls == [("cais/wmdp", "wmdp-bio", "test"), ("cais/wmdp", "one", None), ("cais/wmdp", "two", None)]
    # an existing file never goes near the hub, even one named like an id (a Parquet file is known by its bytes)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` would fail
    (tmp_path / "cais").mkdir()
    write_parquet(list(rows), tmp_path / "cais" / "wmdp")
    assert load_mc("cais/wmdp") == list(rows)
    write_arrow(list(rows), tmp_path / "cais" / "wmdp-stream", stream=True)
    assert load_mc("cais/wmdp-stream") == list(rows)
    (tmp_path / "cais" / "junk").write_bytes(b"\x00\xff\xfe" * 100)
    with pytest.raises(UsageError, match="not a UTF-8 JSON/JSONL file"):
        load_mc("cais/junk")


def test_cli_prompts_parquet_and_bad_forget(world_dir, tmp_path, capsys):
    pq.write_table(pcsv.read_csv(shared_data("xstest/xstest_prompts.csv")), tmp_path / "xstest.parquet")
    code, out, err = run_cli(["prompts", "xstest", tmp_path / "xstest.parquet", "--out", tmp_path / "p.jsonl"], capsys)
    assert code == 0, err
    assert "450 prompts" in out and len(jsonl_rows(tmp_path / "p.jsonl")) == 450

    model = tmp_path / "model"  # never loaded: the data is checked first
    model.mkdir()
    (model / "config.json").write_text("{}")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(os.urandom(256))
    code, _, err = run_cli(
        [
            "unlearn",
            "--model",
            model,
            "--forget",
            bad,
            "--retain",
            world_dir / "retain90.jsonl",
            "--method",
            "npo",
            "--out",
            tmp_path / "out",
        ],
        capsys,
    )
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(bad) in lines[0] and "unreadable Parquet" in lines[0]
    assert not (tmp_path / "out").exists()
