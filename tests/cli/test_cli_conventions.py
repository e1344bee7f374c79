"""`--quiet`, `--json` and `--dtype` on every command (cli/conventions.py): quiet silences stderr but not the error
line; json leaves exactly one JSON document on stdout; a command's own --json is left to it; --dtype loads models
in that dtype, and full fine-tuning refuses weights below float32."""

import json

from tests.cli.test_cli import run_cli


def _unlearn(target_dir, world_dir, out):
    return [
        "unlearn",
        "--model",
        target_dir,
        "--forget",
        world_dir / "forget10.jsonl",
        "--retain",
        world_dir / "retain90.jsonl",
        "--method",
        "grad_ascent",
        "--steps",
        2,
        "--out",
        out,
    ]


def test_quiet_silences_progress_but_not_results(target_dir, world_dir, tmp_path, capsys):
    code, out, err = run_cli(_unlearn(target_dir, world_dir, tmp_path / "a"), capsys)
    assert code == 0
    code, out_q, err_q = run_cli([*_unlearn(target_dir, world_dir, tmp_path / "b"), "--quiet"], capsys)
    assert code == 0 and err_q == "" and "grad_ascent: 2 steps" in out_q


def test_quiet_still_prints_the_error_line(world_dir, tmp_path, capsys):
    code, _, err = run_cli([*_unlearn(tmp_path / "missing", world_dir, tmp_path / "c"), "--quiet"], capsys)
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_json_prints_the_results_document_only(target_dir, world_dir, tmp_path, capsys):
    code, out, err = run_cli(
        ["eval", "--model", target_dir, "--data", world_dir, "--out", tmp_path / "e", "--json"], capsys
    )
    assert code == 0, err
    doc = json.loads(out)  # exactly one JSON document: the table went to stderr
    assert doc == json.loads((tmp_path / "e" / "results.json").read_text())
    assert "forget_quality" in err or "forget_rouge" in err


def test_a_commands_own_json_is_kept(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OBLIVIATE_REGISTRY", str(tmp_path / "r.sqlite"))
    code, out, _ = run_cli(["runs", "ls", "--json"], capsys)
    assert code == 0 and json.loads(out) == []


def test_take_value_reads_both_spellings_and_leaves_a_commands_own_flag():
    from obliviate.cli.app import app
    from obliviate.cli.conventions import take_value

    assert take_value(app, ["eval", "--dtype", "bf16", "--out", "o"], "--dtype") == (["eval", "--out", "o"], "bf16")
    assert take_value(app, ["--dtype=float16", "eval"], "--dtype") == (["eval"], "float16")
    assert take_value(app, ["eval", "--out", "o"], "--dtype") == (["eval", "--out", "o"], None)
    own = ["models", "convert", "--gguf", "f.gguf", "--out", "o", "--dtype", "bfloat16"]
    assert take_value(app, own, "--dtype") == (own, None)  # `models convert` defines --dtype itself
    before = ["--dtype", "bfloat16", *own[:-2]]  # ... wherever the flag stands
    assert take_value(app, before, "--dtype") == (before, None)


def test_dtype_loads_models_in_it_and_full_fine_tuning_refuses_it(target_dir, world_dir, tmp_path, capsys, monkeypatch):
    import torch
    from safetensors import safe_open

    from obliviate.models.load import load_model

    monkeypatch.setenv("OBLIVIATE_DTYPE", "float32")  # restored (removed) after the test: main() sets it
    assert next(load_model(str(target_dir))[0].parameters()).dtype == torch.float32
    lora = [*_unlearn(target_dir, world_dir, tmp_path / "lora"), "--lora-r", 4, "--dtype", "bf16"]
    code, _, err = run_cli(lora, capsys)
    assert code == 0, err
    assert next(load_model(str(target_dir))[0].parameters()).dtype == torch.bfloat16  # the process default now
    with safe_open(str(tmp_path / "lora" / "model.safetensors"), "pt") as f:  # LoRA merged into bf16 weights
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    code, _, err = run_cli([*_unlearn(target_dir, world_dir, tmp_path / "full"), "--dtype", "bfloat16"], capsys)
    assert code == 2 and "full fine-tuning needs float32 weights" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "full" / "model.safetensors").exists()
    code, _, err = run_cli([*_unlearn(target_dir, world_dir, tmp_path / "bad"), "--dtype", "bf17"], capsys)
    assert code == 2 and "unknown dtype 'bf17'" in err
