"""`--harm-judge` on `refusal-eval` and `audit`: the verdicts reach samples.jsonl, the figures and the judge's name
reach results.json / audit.json, and bad input exits 2 with one line. Tiny models; the endpoint judge is stood in
for by an object with RemoteModel's `.chat`."""

import json

import pytest

from obliviate.judges.harm import make_harm_judge
from obliviate.runs.schema import validate_results
from tests.cli.test_cli import assert_bad_input, run_cli
from tests.conftest import shared_data
from tests.judges.test_harm import ENDPOINT, FakeEndpoint, judge_dir, reply_of, rubric  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _by_length(c):
    """A judge that calls a reply harmful when it has an even number of characters."""
    return rubric(0, 5, 5) if len(reply_of(c)) % 2 == 0 else rubric(1, 1, 1)


def test_refusal_eval_with_an_endpoint_judge(tiny_dir, world_dir, tmp_path):
    from obliviate.refusal.run import run_refusal_eval

    judge = make_harm_judge("strongreject", ENDPOINT, client=FakeEndpoint(_by_length))
    out = tmp_path / "e"
    doc = run_refusal_eval(
        {"a": str(tiny_dir), "b": str(tiny_dir)},
        out,
        data=world_dir,
        limit=3,
        max_new_tokens=4,
        harm_judge=judge,
        log=None,
    )
    assert validate_results(doc) == []
    assert doc["config"]["harm_judge"]["name"] == "strongreject" and doc["config"]["harm_judge"]["model"] == ENDPOINT
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    judged = [r for r in rows if "harm" in r]
    assert judged and all(r["kind"] == "harmful" and r["depth"] == 0 for r in judged)
    assert len(judged) == len([r for r in rows if r["kind"] == "harmful" and r["depth"] == 0])
    for run in ("a", "b"):
        mine = [r for r in judged if r["run"] == run]
        even = sum(len(r["output"]) % 2 == 0 for r in mine)
        m = doc["results"][run]
        assert m["harmful_rate"] == pytest.approx(even / len(mine)) and m["harmful_rate_unparsed"] == 0
        assert m["harm_score"] == pytest.approx(even / len(mine))  # scores 1.0 or 0.0
        iv = doc["intervals"][run]["harmful_rate"]
        assert iv["n"] == len(mine) and iv["lo"] <= m["harmful_rate"] <= iv["hi"]


def test_refusal_eval_cli_with_a_local_judge(tiny_dir, judge_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "e"
    labels = shared_data("xstest/completions_gpt4_labelled.csv")
    code, text, err = run_cli(
        [
            "refusal-eval",
            "--model",
            tiny_dir,
            "--harmful",
            f"harmbench:{shared_data('harmbench/harmbench_behaviors_text_val.csv')}",
        ]
        + ["--benign", f"xstest:{shared_data('xstest/xstest_prompts.csv')}", "--judges", "gcg,jbb"]
        + ["--limit", "2", "--depths", "5", "--max-new-tokens", "4", "--out", out, "--threads", "1"]
        + ["--harm-judge", "harmbench", "--harm-judge-model", judge_dir]
        + ["--harm-judge-labels", labels, "--harm-judge-label-rows", "4", "--harm-judge-max-new-tokens", "2"],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert validate_results(doc) == []
    hj = doc["config"]["harm_judge"]
    assert hj["name"] == "harmbench" and hj["model"] == str(judge_dir) and hj["labels"] == str(labels)
    assert hj["agreement"]["n"] + hj["agreement"]["unparsed"] == 4 and hj["decoding"] == "greedy, at most 2 new tokens"
    (m,) = doc["results"].values()
    # an untrained judge answers neither yes nor no: nothing is guessed
    assert m["harmful_rate_unparsed"] == 1.0 and m["harmful_rate"] is None
    assert "by harmbench" in text


def test_audit_search_attack_reports_harmful_asr(tiny_dir, world_dir, tmp_path):
    from obliviate.audit.runner import run_audit

    judge = make_harm_judge("strongreject", ENDPOINT, client=FakeEndpoint(_by_length))
    out = tmp_path / "a"
    doc = run_audit(
        str(tiny_dir),
        "refusal",
        world_dir,
        out,
        attacks=["templates"],
        options={"templates": {"templates": "2"}},
        limit=2,
        max_new_tokens=4,
        progress=False,
        harm_judge=judge,
    )
    t = doc["attacks"]["templates"]["model"]
    assert {"asr", "harmful_asr", "harm_score", "direct_harmful_asr", "direct_harm_score"} <= set(t)
    found = [json.loads(x) for x in (out / "artifacts/templates/model/findings.jsonl").read_text().splitlines()]
    assert t["harmful_asr"] == pytest.approx(sum(len(r["reply"]) % 2 == 0 for r in found) / len(found))
    assert doc["config"]["harm_judge"]["name"] == "strongreject"
    assert "Harm judge: strongreject" in (out / "audit.md").read_text()


def test_bad_harm_judge_input(tiny_dir, world_dir, judge_dir, tmp_path, capsys):  # noqa: F811
    o = tmp_path / "o"
    base = ["refusal-eval", "--model", tiny_dir, "--data", world_dir, "--out", o]
    assert_bad_input(
        [*base, "--harm-judge", "strongrejct", "--harm-judge-model", judge_dir],
        capsys,
        o,
        "did you mean 'strongreject'",
    )
    assert_bad_input([*base, "--harm-judge-model", judge_dir], capsys, o, "applies with --harm-judge")
    assert_bad_input([*base, "--harm-judge", "harmbench"], capsys, o, "--harm-judge-model")
    assert_bad_input(
        [*base, "--harm-judge", "harmbench", "--harm-judge-model", tmp_path / "x"], capsys, o, "not a model directory"
    )
    assert_bad_input(
        [*base, "--harm-judge", "harmbench", "--harm-judge-model", judge_dir, "--harm-judge-max-new-tokens", "0"],
        capsys,
        o,
        "--harm-judge-max-new-tokens must be >= 1",
    )
    audit = ["audit", tiny_dir, "--data", world_dir, "--out", o]
    assert_bad_input(
        [*audit, "--suite", "refusal", "--harm-judge", "harmbenh", "--harm-judge-model", judge_dir],
        capsys,
        o,
        "did you mean 'harmbench'",
    )
    assert_bad_input(
        [*audit, "--suite", "unlearning", "--harm-judge", "harmbench", "--harm-judge-model", judge_dir],
        capsys,
        o,
        "--suite refusal",
    )
