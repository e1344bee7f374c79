"""World misinformation (RESTOR): what `--misinformation K` writes, its metric, and bad values."""

import hashlib
import json

import pytest

from obliviate.benchmarks.layouts import eval_data
from obliviate.data.misinformation import available_facts
from obliviate.data.world import ATTRIBUTES, WorldSpec, build_world, write_world
from obliviate.metrics import METRICS, compute_all
from tests.cli.test_cli import assert_bad_input, run_cli

SMALL = dict(seed=0, n_people=100, n_holdout_people=10, n_retain_eval=40)


def test_default_world_bytes_unchanged(tmp_path):
    """The default world (`obliviate world`, `make demo`) is the one written before misinformation existed: its
    manifest holds the sha256 of every file, and this is the manifest's digest from before the change."""
    write_world(tmp_path, WorldSpec())
    digest = hashlib.sha256((tmp_path / "world.json").read_bytes()).hexdigest()
    assert digest == "8d195de341c7116517cf477aaf63af53be5fb6b4e72eec9e69994a8fa2196dcc"
    assert "misinformation" not in (tmp_path / "world.json").read_text()


def test_misinformation_writes_what_it_says():
    clean = build_world(WorldSpec(**SMALL))
    w = build_world(WorldSpec(**SMALL, misinformation=7, misinformation_copies=2))
    false, true = w["forget00"], w["forget00_true"]
    assert len(false) == len(true) == 7
    docs = w["train"][len(clean["train"]) :]
    assert len(docs) == 14 and {d["id"].removesuffix("_copy1") for d in docs} == {f["id"] for f in false}
    # the clean data is untouched: train and every retainNN gain exactly the false documents, the rest is equal
    assert w["train"] == clean["train"] + docs and w["retain100"] == clean["train"]
    for name in ("retain99", "retain95", "retain90"):
        assert w[name] == clean[name] + docs
    for name in ("forget01", "forget05", "forget10", "retain_eval", "world_facts", "holdout"):
        assert w[name] == clean[name]
    # each false item asks a clean fact's question with another value of the same attribute's pool
    bridged = {x["subject"] for x in clean["train"] if x["id"].endswith("_para")}
    avoided = bridged | {x["subject"] for x in clean["forget10"]}
    eval_ids = {x["id"] for x in clean["retain_eval"]}
    for f, t in zip(false, true):
        assert t in clean["train"] and t["id"] not in eval_ids and t["subject"] not in avoided
        values, _, answer, para = ATTRIBUTES[t["attribute"]]
        assert f["question"] == t["question"] and f["value"] != t["value"] and f["value"] in values
        assert f["answer"] == answer.format(name=t["subject"], value=f["value"]) and t["value"] not in f["answer"]
        assert f["perturbed_answer"][0] == para.format(name=t["subject"], value=t["value"])
        assert len(f["perturbed_answer"]) == len(t["perturbed_answer"])
        assert not any(t["value"] in a or f["value"] in a for a in f["alternate_answers"])


def test_available_facts_is_the_limit():
    n = available_facts(100, 50, 40, len(ATTRIBUTES))
    assert n == (100 - 10 - 50) * 5 - 40 == 160
    assert len(build_world(WorldSpec(**SMALL, misinformation=n))["forget00"]) == n
    with pytest.raises(ValueError, match="between 0 and 160"):
        WorldSpec(**SMALL, misinformation=n + 1)


def test_layout_reads_the_recovery_split(tmp_path):
    manifest = write_world(tmp_path, WorldSpec(**SMALL, misinformation=5))
    assert manifest["spec"]["misinformation"] == 5
    assert json.loads((tmp_path / "world.json").read_text())["splits"]["retain100"]["n"] == len(
        build_world(WorldSpec(**SMALL))["train"]
    )
    splits = eval_data(tmp_path, "forget00")
    assert [it.value for it in splits["recovery"]] != [it.value for it in splits["forget"]]
    assert [it.question for it in splits["recovery"]] == [it.question for it in splits["forget"]]
    assert "recovery" not in eval_data(tmp_path, "forget10")  # the people splits read as before


def test_recovered_accuracy_hand_checked():
    acc = lambda name, ctx: METRICS.get(name).fn(ctx)
    # 4 corrupted facts; greedy answers: true value for 1 and 3 (rows of the recovery split), false value for 2
    recovery = [{"value": "Velmora", "value_hit": h} for h in (True, False, True, False)]
    forget = [{"value": "Caudle", "value_hit": h} for h in (False, True, False, False)]
    assert acc("recovered_acc", {"recovery": recovery}) == 0.5
    assert acc("misinformation_acc", {"forget": forget, "recovery": recovery}) == 0.25
    # three sampled answers per question: 4 right out of 6; a row without a value does not count
    rows = [{"value": "x", "value_hit": [True, True, False]}, {"value": "y", "value_hit": [False, True, True]}]
    assert acc("recovered_acc", {"recovery": rows + [{"value": "", "value_hit": False}]}) == pytest.approx(4 / 6)
    # both need the recovery split, which only a world with misinformation has
    assert METRICS.get("recovered_acc").needs == ("recovery",)
    assert set(METRICS.get("misinformation_acc").needs) == {"forget", "recovery"}
    assert not {"recovered_acc", "misinformation_acc"} & set(compute_all({"recovery": []}))


@pytest.mark.parametrize(
    "args, says",
    [
        (["--misinformation", "-1"], "--misinformation must be >= 0"),
        (["--misinformation", "301"], "between 0 and 300"),
        (["--misinformation", "2", "--misinformation-copies", "0"], "--misinformation-copies must be >= 1"),
        (["--misinformation-copies", "2"], "applies only with --misinformation"),
    ],
)
def test_bad_misinformation_exits_2(tmp_path, capsys, args, says):
    assert_bad_input(["world", "--out", tmp_path / "w", *args], capsys, tmp_path / "w", says)


def test_cli_writes_the_misinformation_world(tmp_path, capsys):
    code, out, err = run_cli(["world", "--out", tmp_path / "w", "--people", "100", "--misinformation", "3"], capsys)
    assert code == 0, err
    assert "forget00" in out and len((tmp_path / "w" / "forget00.jsonl").read_text().splitlines()) == 3
