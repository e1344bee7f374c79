"""`--quiet` and `--json` on every command (cli/conventions.py): quiet silences stderr but not the error line;
json leaves exactly one JSON document on stdout; a command's own --json is left to it."""

import json

from tests.test_cli import run_cli


def _unlearn(target_dir, world_dir, out):
    return ["unlearn", "--model", target_dir, "--forget", world_dir / "forget10.jsonl", "--retain",
            world_dir / "retain90.jsonl", "--method", "grad_ascent", "--steps", 2, "--out", out]


def test_quiet_silences_progress_but_not_results(target_dir, world_dir, tmp_path, capsys):
    code, out, err = run_cli(_unlearn(target_dir, world_dir, tmp_path / "a"), capsys)
    assert code == 0
    code, out_q, err_q = run_cli([*_unlearn(target_dir, world_dir, tmp_path / "b"), "--quiet"], capsys)
    assert code == 0 and err_q == "" and "grad_ascent: 2 steps" in out_q


def test_quiet_still_prints_the_error_line(world_dir, tmp_path, capsys):
    code, _, err = run_cli([*_unlearn(tmp_path / "missing", world_dir, tmp_path / "c"), "--quiet"], capsys)
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_json_prints_the_results_document_only(target_dir, world_dir, tmp_path, capsys):
    code, out, err = run_cli(["eval", "--model", target_dir, "--data", world_dir, "--out", tmp_path / "e", "--json"],
                             capsys)
    assert code == 0, err
    doc = json.loads(out)  # exactly one JSON document: the table went to stderr
    assert doc == json.loads((tmp_path / "e" / "results.json").read_text())
    assert "forget_quality" in err or "forget_rouge" in err


def test_a_commands_own_json_is_kept(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OBLIVIATE_REGISTRY", str(tmp_path / "r.sqlite"))
    code, out, _ = run_cli(["runs", "ls", "--json"], capsys)
    assert code == 0 and json.loads(out) == []
