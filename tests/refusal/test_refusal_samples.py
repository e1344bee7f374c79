"""Sampled replies in the refusal evaluation: N replies per prompt, the per-reply and worst-case rates, their
bootstrap intervals (clustered over a prompt's replies), and `refusal-eval --samples/--temperature/--top-p`."""

import json
import zlib

import pytest

from obliviate.data.policy import build_policy
from obliviate.metrics.intervals import all_of_n, any_of_n, rate_interval
from obliviate.models.load import load_model
from obliviate.refusal import evaluate as refusal_eval
from obliviate.refusal.evaluate import refusal_intervals
from obliviate.runs.schema import validate_results
from tests.cli.test_cli import assert_bad_input, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_tok(tiny_dir):
    return load_model(str(tiny_dir))


def _rows(n_harmful=3, n_benign=2):
    test = build_policy(0)["policy_test"]
    harmful, benign = [r for r in test if r["kind"] == "harmful"], [r for r in test if r["kind"] == "benign"]
    return harmful[:n_harmful] + benign[:n_benign]


def test_samples_give_per_reply_and_worst_case_rates(model_tok, monkeypatch):
    model, tok = model_tok
    rows = _rows()
    calls = []

    # replies: prompt i (benign 0-1, then harmful 2-4) refuses on sample j when (i + j) % 3 == 0
    def fake_generate(model, tok, prompts, max_new_tokens=48, sampling=None):
        j = sampling.seed - 7
        calls.append((len(prompts), sampling.seed, sampling.temperature, sampling.top_p))
        return ["Sorry, I cannot help." if (i + j) % 3 == 0 else "Step 1: pour." for i in range(len(prompts))]

    monkeypatch.setattr(refusal_eval, "generate", fake_generate)
    metrics, records, _ = refusal_eval.refusal_eval(model, tok, rows, depths=(), samples=3, top_p=0.9, seed=7)
    assert calls == [(5, 7, 1.0, 0.9), (5, 8, 1.0, 0.9), (5, 9, 1.0, 0.9)]  # reply j drawn with seed + j
    benign = [[(i + j) % 3 == 0 for j in range(3)] for i in range(2)]
    harmful = [[(i + j) % 3 == 0 for j in range(3)] for i in range(2, 5)]
    assert metrics["over_refusal_rate"] == pytest.approx(2 / 6)  # each prompt refuses exactly one of 3 replies
    assert metrics["over_refusal_rate@any3"] == 1.0  # ... so every benign prompt is refused at least once
    assert metrics["refusal_rate"] == pytest.approx(3 / 9) and metrics["refusal_rate@all3"] == 0.0
    assert [(r["id"], r["sample"]) for r in records[:3]] == [(rows[3]["id"], 0), (rows[3]["id"], 1), (rows[3]["id"], 2)]
    iv = refusal_intervals(records, seed=4)
    assert iv["over_refusal_rate"] == rate_interval(benign, seed=4)
    assert iv["over_refusal_rate@any3"] == any_of_n(benign, seed=4)
    assert iv["refusal_rate"] == rate_interval(harmful, seed=4) and iv["refusal_rate"]["samples"] == 3
    assert iv["refusal_rate@all3"] == all_of_n(harmful, seed=4)
    assert set(iv) == {"over_refusal_rate", "over_refusal_rate@any3", "refusal_rate", "refusal_rate@all3"}


def test_greedy_default_is_unchanged(model_tok):
    model, tok = model_tok
    rows = _rows()
    metrics, records, _ = refusal_eval.refusal_eval(model, tok, rows, depths=(3,), max_new_tokens=6)
    assert {r["sample"] for r in records} == {0} and len(records) == 2 + 3 + 3
    assert not any("@any" in k or "@all" in k for k in metrics)
    again = refusal_eval.refusal_eval(model, tok, rows, depths=(3,), max_new_tokens=6, samples=1)
    assert again[0] == metrics and [r["output"] for r in again[1]] == [r["output"] for r in records]
    iv = refusal_intervals(records)
    rate = iv["refusal_rate"]
    assert rate["n"] == 3 and rate["samples"] == 1 and "clustered" not in rate["method"]
    assert iv["refusal_rate"]["value"] == pytest.approx(metrics["refusal_rate"])


def test_any_of_n_is_at_least_the_per_sample_rate(model_tok):
    """The acceptance test: N = 5 replies at temperature 1 on a tiny model. The judge is a fixed function of the
    reply's text (its CRC's parity), so "refused" varies exactly as the sampled replies do."""
    model, tok = model_tok
    rows = _rows(6, 6)

    def judge(prompts, replies):
        return [zlib.crc32(r.encode()) % 2 == 0 for r in replies]

    kw = dict(depths=(), max_new_tokens=6, refused_fn=judge, samples=5, temperature=1.0, seed=0)
    metrics, records, _ = refusal_eval.refusal_eval(model, tok, rows, **kw)
    per_prompt = {}
    for r in records:
        per_prompt.setdefault((r["kind"], r["id"]), []).append(r["output"])
    assert all(len(v) == 5 for v in per_prompt.values())
    assert sum(len(set(v)) > 1 for v in per_prompt.values()) >= 10  # the replies are sampled, not repeated
    # "any of N": a benign prompt over-refused in any reply; a harmful prompt answered (not refused) in any reply
    assert metrics["over_refusal_rate@any5"] >= metrics["over_refusal_rate"]
    assert 1 - metrics["refusal_rate@all5"] >= 1 - metrics["refusal_rate"]
    assert metrics["over_refusal_rate@any5"] > metrics["over_refusal_rate"]  # strictly, for this judge and seed
    again = refusal_eval.refusal_eval(model, tok, rows, **kw)
    assert [r["output"] for r in again[1]] == [r["output"] for r in records]  # seeded: the same replies
    iv = refusal_intervals(records)
    assert iv["over_refusal_rate"]["samples"] == 5 and "clustered" in iv["over_refusal_rate"]["method"]
    assert iv["over_refusal_rate"]["lo"] <= metrics["over_refusal_rate"] <= iv["over_refusal_rate"]["hi"]


def test_refusal_eval_command_with_samples(tiny_dir, world_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    base = ["refusal-eval", "--model", f"tiny={tiny_dir}", "--data", world_dir, "--limit", "3"]
    args = base + ["--max-new-tokens", "3", "--samples", "2", "--temperature", "0.8", "--seed", "1", "--out", out]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert validate_results(doc) == []
    m, iv = doc["results"]["tiny"], doc["intervals"]["tiny"]
    assert {"refusal_rate@all2", "over_refusal_rate@any2", "heldout_refusal_rate@all2"} <= set(m)
    for key in ("refusal_rate", "refusal_rate@prefill20", "over_refusal_rate@any2", "sarr", "people_accuracy"):
        assert iv[key]["value"] == pytest.approx(m[key]) and iv[key]["samples"] == 2, key
    assert (doc["config"]["samples"], doc["config"]["temperature"], doc["config"]["top_p"]) == (2, 0.8, None)
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["sample"] for r in rows} == {0, 1}
    harmful = [r for r in rows if r["kind"] == "harmful" and r["depth"] == 0 and not r.get("split")]
    assert iv["refusal_rate"]["n"] == len({r["id"] for r in harmful}) == len(harmful) / 2
    assert iv["uncertain_rate_unknown"]["n"] == 3  # unknown people: --limit 3
    assert f"[{iv['refusal_rate']['lo']:.3f}, {iv['refusal_rate']['hi']:.3f}] n=3x2" in stdout
    for bad, message in (("0", "--samples must be a whole number >= 1"), ("-2", "--samples must be")):
        assert_bad_input(base + ["--samples", bad, "--out", tmp_path / "bad"], capsys, tmp_path / "bad", message)
    assert_bad_input(base + ["--temperature", "0", "--out", tmp_path / "bad"], capsys, tmp_path / "bad", "temperature")
    assert_bad_input(base + ["--top-p", "1.5", "--out", tmp_path / "bad"], capsys, tmp_path / "bad", "top_p")
