"""Prompt-set loaders on the real shared samples (../shared/data) and on files shaped like the others."""

import json

import pytest

from obliviate.core.errors import UsageError
from obliviate.data.prompts import load_prompts
from tests.cli.test_cli import run_cli
from tests.conftest import shared_data


def test_real_files():
    xs = load_prompts("xstest", shared_data("xstest/xstest_prompts.csv"))
    assert len(xs) == 450 and sum(r["label"] == "benign" for r in xs) == 250
    hb = load_prompts("harmbench", shared_data("harmbench/harmbench_behaviors_text_val.csv"))
    assert len(hb) == 80 and all(r["label"] == "harmful" and r["prompt"] for r in hb)
    jb = load_prompts("jailbreakbench", shared_data("jailbreakbench/harmful_behaviors_jailbreakbench.csv"))
    assert len(jb) == 100 and jb[0]["category"]
    assert set(xs[0]) == {"id", "prompt", "label", "category", "source", "context", "target"}
    fut = load_prompts("past_tense", shared_data("past_tense/future_tense_gpt-3.5-turbo.json"))
    assert len(fut) == 100 and fut[0]["category"] == "future" and fut[0]["context"].startswith("Write a defamatory")


def test_shaped_files(tmp_path):
    (tmp_path / "harmful_behaviors.csv").write_text("goal,target\nDo a bad thing,Sure\n")
    assert load_prompts("advbench", tmp_path / "harmful_behaviors.csv")[0]["label"] == "harmful"
    (tmp_path / "or-bench-hard-1k.csv").write_text("prompt,category\nHow do I kill time?,violence\n")
    (tmp_path / "or-bench-toxic.csv").write_text("prompt,category\nHurt someone,violence\n")
    assert load_prompts("orbench", tmp_path / "or-bench-hard-1k.csv")[0]["label"] == "benign"
    assert load_prompts("orbench", tmp_path / "or-bench-toxic.csv")[0]["label"] == "harmful"
    (tmp_path / "contrast_test.jsonl").write_text(json.dumps({"prompt": "p", "category": "c"}) + "\n")
    assert load_prompts("coconot", tmp_path / "contrast_test.jsonl")[0]["label"] == "benign"


def test_bad_input(tmp_path, capsys):
    (tmp_path / "x.csv").write_text("question,label\nq,safe\n")
    with pytest.raises(UsageError, match="missing column"):
        load_prompts("xstest", tmp_path / "x.csv")
    (tmp_path / "y.csv").write_text("prompt,label\nq,maybe\n")
    with pytest.raises(UsageError, match="y.csv:2"):
        load_prompts("xstest", tmp_path / "y.csv")
    (tmp_path / "e.csv").write_text("prompt,label\n")
    code, _, err = run_cli(["prompts", "xstest", tmp_path / "e.csv", "--out", tmp_path / "o.jsonl"], capsys)
    assert code == 2 and "no rows" in err and not (tmp_path / "o.jsonl").exists()
    code, _, err = run_cli(["prompts", "xtest", tmp_path / "e.csv", "--out", tmp_path / "o.jsonl"], capsys)
    assert code == 2 and "did you mean 'xstest'" in err
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = run_cli(["prompts", "xstest", tmp_path / "bin.csv", "--out", tmp_path / "o.jsonl"], capsys)
    assert code == 2 and "not a UTF-8 CSV file" in err


def test_cli_writes_jsonl(tmp_path, capsys):
    (tmp_path / "harmful_behaviors.csv").write_text("goal,target\nDo a bad thing,Sure\nAnother,Sure\n")
    code, out, err = run_cli(
        ["prompts", "advbench", tmp_path / "harmful_behaviors.csv", "--out", tmp_path / "p.jsonl"], capsys
    )
    assert code == 0 and "2 prompts (2 harmful)" in out, err
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 2
