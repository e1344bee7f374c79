"""The refusal suite end to end at smoke size, and the refusal commands (align, refusal-eval, calibrate)."""

import json

import pytest

from obliviate.models.control_tokens import control_ids
from obliviate.runs.schema import validate_results
from tests.cli.test_cli import assert_bad_input, run_cli


@pytest.fixture(scope="module")
def demo_doc(tmp_path_factory):
    from obliviate.demos.refusal import run_refusal_demo

    out = tmp_path_factory.mktemp("refusal_demo") / "out"
    doc = run_refusal_demo(
        out,
        people=100,
        finetune_steps=10,
        align_steps=2,
        attack_steps=2,
        eval_limit=6,
        max_new_tokens=6,
        methods=["refusal_sft", "derta", "refusal_tokens"],
        progress=False,
        guards=True,
    )
    return out, doc


def test_demo_writes_results_keyed_by_run(demo_doc):
    out, doc = demo_doc
    saved = json.loads((out / "results.json").read_text())
    assert validate_results(saved) == []
    assert saved["results"] == doc["results"]
    assert list(doc["results"]) == [
        "target",
        "refusal_sft",
        "derta",
        "refusal_tokens",
        "refusal_sft+ada_lp",
        "refusal_sft+latent",
        "attack_sft",
        "attack_token_constrained",
    ]
    assert (out / "guards" / "ada_lp" / "guard.json").is_file()
    keys = {
        "refusal_rate",
        "over_refusal_rate",
        "refusal_rate@prefill5",
        "refusal_rate@prefill10",
        "refusal_rate@prefill20",
        "refusal_rate@prefill40",
        "refusal_position_mean",
        "heldout_refusal_rate",
        "heldout_refusal_rate@prefill20",
        "sarr",
        "people_accuracy",
        "utility_vs_target",
        "uncertain_rate_known",
        "uncertain_rate_unknown",
    }
    for run, metrics in doc["results"].items():
        assert keys <= set(metrics), (run, keys - set(metrics))
        assert all(0 <= metrics[k] <= 1 for k in keys if k.endswith("rate") or "@prefill" in k)
    assert set(doc["refusal_positions"]) == set(doc["results"])
    assert (out / "refusal_depth.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["run"] for r in rows} == set(doc["results"]) and {"harmful", "benign", "people"} <= {
        r["kind"] for r in rows
    }


@pytest.fixture(scope="module")
def tokens_model(demo_doc):
    out, _ = demo_doc
    return out / "models" / "refusal_tokens", out / "world"


def test_calibrate_writes_a_monotone_curve(tokens_model, tmp_path, capsys):
    model, world = tokens_model
    code, out, err = run_cli(
        ["calibrate", model, "--data", world, "--out", tmp_path / "cal", "--taus", "0,0.5,1", "--limit", "16"], capsys
    )
    assert code == 0, err
    curve = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert curve["tau"] == [0.0, 0.5, 1.0]
    r = curve["refusal_rate"]
    assert r == sorted(r, reverse=True)  # refusing only when p > tau: never more refusals at a higher tau
    assert curve["over_refusal_rate"] == sorted(curve["over_refusal_rate"], reverse=True)
    assert (tmp_path / "cal" / "calibration.png").is_file()


def test_align_and_refusal_eval_commands(demo_doc, tmp_path, capsys):
    out, _ = demo_doc
    code, _, err = run_cli(
        [
            "align",
            "refusal_tokens",
            "--model",
            out / "models" / "target",
            "--data",
            out / "world",
            "--out",
            tmp_path / "aligned",
            "--steps",
            "2",
            "--gradient-checkpointing",
        ],
        capsys,
    )
    assert code == 0, err
    from transformers import AutoTokenizer

    assert control_ids(AutoTokenizer.from_pretrained(tmp_path / "aligned"))[0] is not None
    assert json.loads((tmp_path / "aligned" / "align.json").read_text())["method"] == "refusal_tokens"
    code, _, err = run_cli(
        [
            "refusal-eval",
            "--model",
            f"tok={tmp_path / 'aligned'}",
            "--model",
            f"target={out / 'models' / 'target'}",
            "--data",
            out / "world",
            "--out",
            tmp_path / "ev",
            "--limit",
            "4",
            "--max-new-tokens",
            "6",
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert validate_results(doc) == []
    assert set(doc["results"]) == {"tok", "target"} and "refusal_rate@prefill20" in doc["results"]["tok"]


def test_refusal_commands_bad_input(demo_doc, tmp_path, capsys):
    out, _ = demo_doc
    target, world = out / "models" / "target", out / "world"
    o = tmp_path / "o"
    assert_bad_input(["align", "dertaa", "--model", target, "--data", world, "--out", o], capsys, o, "did you mean")
    empty = tmp_path / "empty"  # a data directory without the policy files (not around --out: that is refused)
    empty.mkdir()
    assert_bad_input(["align", "derta", "--model", target, "--data", empty, "--out", o], capsys, o, "not found")
    assert_bad_input(
        ["align", "derta", "--model", target, "--data", world, "--out", o, "--option", "k_max=3"],
        capsys,
        o,
        "no option",
    )
    assert_bad_input(
        ["align", "token_constrained", "--model", target, "--data", world, "--out", o, "--max-batch-tokens", "256"],
        capsys,
        o,
        "TokenConstrained's loss does not split",
    )
    assert_bad_input(
        ["align", "derta", "--model", target, "--data", world, "--out", o, "--max-batch-tokens", "-1"],
        capsys,
        o,
        "--max-batch-tokens must be >= 0",
    )
    assert_bad_input(["calibrate", target, "--data", world, "--out", o], capsys, o, "no refusal tokens")
    assert_bad_input(["calibrate", target, "--data", world, "--out", o, "--taus", "0,2"], capsys, o, "[0, 1]")
    assert_bad_input(["demo", "--suite", "nope", "--out", o], capsys, o, "unknown demo suite")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "policy_train.jsonl").write_text('{"prompt": "x", "answer": "y", "kind": "harmful"}\n')
    assert_bad_input(
        ["align", "derta", "--model", target, "--data", bad, "--out", o],
        capsys,
        o,
        "policy_train.jsonl:1: a harmful row needs a 'refusal'",
    )
    (bad / "policy_train.jsonl").write_text("")
    assert_bad_input(["align", "derta", "--model", target, "--data", bad, "--out", o], capsys, o, "empty split")


def test_ls_refusal_methods(capsys):
    code, out, _ = run_cli(["ls", "refusal-methods"], capsys)
    names = {ln.split()[0] for ln in out.splitlines()}
    assert (
        code == 0
        and {"refusal_sft", "derta", "qi_augment", "refusal_tokens", "r_tuning", "safe_eraser", "token_constrained"}
        == names
    )
