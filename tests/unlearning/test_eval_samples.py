"""`eval --samples N --temperature T`: sampled answers, the any-of-N value accuracy, and the bootstrap intervals
of the per-item figures in results.json and the console table."""

import json

import pytest

from obliviate.metrics.intervals import any_of_n, mean_interval, rate_interval
from obliviate.metrics.tofu import rouge_l_recall
from obliviate.runs.schema import validate_results
from obliviate.unlearning.evaluate import any_of_n_rates, item_intervals
from tests.cli.test_cli import assert_bad_input, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _row(value, answer, generated, hits):
    return {"value": value, "answer": answer, "generated": generated, "value_hit": hits}


def test_item_intervals_by_hand():
    forget = [
        _row("Oslo", "in Oslo", ["in Oslo", "Paris"], [True, False]),
        _row("Rome", "in Rome", ["no idea", "no"], [False, False]),
        _row("Lima", "to Lima", ["Lima", "to Lima"], [True, True]),
        _row("", "x", ["x", "y"], [False, False]),  # no value: not in the value accuracy
    ]
    hits = [[True, False], [False, False], [True, True]]
    rates = any_of_n_rates({"forget": forget}, 2)
    assert rates == {"forget_value_acc@any2": pytest.approx(2 / 3)}
    metrics = {"forget_value_acc": 0.5, "forget_rouge": 0.5} | rates
    iv = item_intervals({"forget": forget}, metrics, seed=2)
    assert iv["forget_value_acc"] == rate_interval(hits, seed=2) and iv["forget_value_acc"]["value"] == 0.5
    assert iv["forget_value_acc@any2"] == any_of_n(hits, seed=2)
    per_item = [[rouge_l_recall(r["answer"], g) for g in r["generated"]] for r in forget]
    assert iv["forget_rouge"] == mean_interval(per_item, seed=2) and iv["forget_rouge"]["samples"] == 2
    assert set(iv) == {"forget_value_acc", "forget_value_acc@any2", "forget_rouge"}  # only figures in `metrics`
    # greedy rows: one answer and one bool each, no any-of-N
    greedy = [_row("Oslo", "in Oslo", "in Oslo", True), _row("Rome", "in Rome", "no", False)]
    assert any_of_n_rates({"forget": greedy}, 1) == {}
    g = item_intervals({"forget": greedy}, {"forget_value_acc": 0.5})
    assert g["forget_value_acc"] == rate_interval([[True], [False]]) and g["forget_value_acc"]["samples"] == 1


def test_eval_command_with_samples(tiny_dir, world_dir, tmp_path, capsys):
    world = tmp_path / "world"  # the world's first 6 questions of each file: each is answered twice
    world.mkdir()
    for f in world_dir.glob("*.jsonl"):
        (world / f.name).write_text("".join(f.read_text().splitlines(keepends=True)[:6]))
    out = tmp_path / "eval"
    base = ["eval", "--model", f"tiny={tiny_dir}", "--data", world]
    args = base + ["--samples", "2", "--temperature", "1.0", "--top-p", "0.9", "--seed", "3", "--out", out]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert validate_results(doc) == []
    m, iv = doc["results"]["tiny"], doc["intervals"]["tiny"]
    assert m["forget_value_acc@any2"] >= m["forget_value_acc"]
    for key in ("forget_value_acc", "forget_value_acc@any2", "forget_rouge", "retain_rouge"):
        assert iv[key]["value"] == pytest.approx(m[key]) and iv[key]["samples"] == 2, key
        assert iv[key]["lo"] <= m[key] <= iv[key]["hi"]
    assert iv["forget_exact_memorization"]["samples"] == 1  # teacher-forced: no sampling
    assert iv["forget_rouge"]["n"] == doc["n_samples"]["forget"]
    assert "forget_quality" not in iv and "model_utility" not in iv  # split-level statistics
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert all(len(r["generated"]) == 2 and len(r["value_hit"]) == 2 for r in rows)
    assert (doc["config"]["samples"], doc["config"]["top_p"], doc["config"]["seed"]) == (2, 0.9, 3)
    rouge = iv["forget_rouge"]
    assert f"{rouge['value']:.3f} [{rouge['lo']:.3f}, {rouge['hi']:.3f}] n={rouge['n']}x2" in stdout
    assert_bad_input(base + ["--samples", "0", "--out", tmp_path / "b"], capsys, tmp_path / "b", "--samples must be")
