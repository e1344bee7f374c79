"""`obliviate tofu-score` against TOFU's own aggregation of the published phi-1.5 logs (../shared/data)."""

import json

import pytest

from tests.cli.test_cli import run_cli
from tests.conftest import shared_data


def test_reproduces_tofu_aggregation(capsys):
    full, retain = (shared_data(f"tofu/eval_logs/phi_{m}_wd0.01.json") for m in ("full", "retain90"))
    code, out, err = run_cli(["tofu-score", full, "--oracle", retain, "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["model_utility"] == pytest.approx(0.522074, abs=1e-6)
    assert r["forget_quality"] == pytest.approx(2.19427e-16, rel=1e-5)
    assert len([k for k in r if k not in ("model_utility", "forget_quality")]) == 12
    code, out, _ = run_cli(["tofu-score", retain, "--json"], capsys)
    assert json.loads(out)["model_utility"] == pytest.approx(0.531991, abs=1e-6)
    code, out, _ = run_cli(["tofu-score", retain], capsys)
    assert code == 0 and out.startswith("model_utility")


def test_bad_logs_exit_2(tmp_path, capsys):
    bad = tmp_path / "log.json"
    bad.write_text('{"eval_log.json": {}}')
    code, _, err = run_cli(["tofu-score", bad], capsys)
    assert code == 2 and "lacks per-sample field 'avg_gt_loss'" in err and err.count("\n") == 1
    bad.write_text("{not json")
    code, _, err = run_cli(["tofu-score", bad], capsys)
    assert code == 2 and "malformed JSON" in err
