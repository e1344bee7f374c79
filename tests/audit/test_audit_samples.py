"""`audit --samples N --temperature T`: the prefill attack judges N sampled replies per prompt, and audit.json's
attack entry carries each figure's n and bootstrap interval."""

import json

import pytest

from tests.cli.test_cli import assert_bad_input, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_audit_prefill_with_samples(tiny_dir, world_dir, tmp_path, capsys):
    out = tmp_path / "audit"
    base = ["audit", tiny_dir, "--suite", "refusal", "--data", world_dir, "--attacks", "prefill", "--limit", "3"]
    args = base + ["--option", "prefill.depths=2", "--max-new-tokens", "3", "--samples", "2", "--out", out]
    code, stdout, err = run_cli(args + ["--temperature", "1.0"], capsys)
    assert code == 0, err
    doc = json.loads((out / "audit.json").read_text())
    entry = doc["attacks"]["prefill"]
    figs, ivs = entry["model"], entry["intervals"]["model"]
    want = {"refusal_rate", "refusal_rate@all2", "refusal_rate@prefill2", "refusal_rate@prefill2@all2"}
    assert set(figs) == set(ivs) == want
    for k, v in figs.items():
        assert ivs[k]["value"] == pytest.approx(v) and ivs[k]["samples"] == 2 and ivs[k]["lo"] <= v <= ivs[k]["hi"]
    assert figs["refusal_rate@all2"] <= figs["refusal_rate"]  # refused in both replies: never more often
    assert (doc["config"]["samples"], doc["config"]["temperature"]) == (2, 1.0)
    assert f"n={ivs['refusal_rate']['n']}x2" in (out / "audit.md").read_text()
    assert_bad_input(base + ["--samples", "0", "--out", tmp_path / "b"], capsys, tmp_path / "b", "--samples must be")
