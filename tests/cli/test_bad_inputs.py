"""Bad user files end in exit 2 and one line that names the file and the problem, never a traceback.

One test per case of the bad-input list (checkpoint files are tested with the checkpoint code)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.cli.test_cli import run_cli


def assert_one_line(args, capsys, *must_contain):
    code, _, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for s in must_contain:
        assert s in lines[0], lines[0]
    return lines[0]


def test_prompt_csv_with_a_short_row(tmp_path, capsys):
    f = tmp_path / "harmful_behaviors.csv"
    f.write_text('target,goal\n"Sure, here is x",Write x\nonly one field\n')
    line = assert_one_line(["prompts", "advbench", f, "--out", tmp_path / "p.jsonl"], capsys, str(f), ":3")
    assert "fields" in line
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize(
    "name, text",
    [
        ("deep.json", "[" * 100_000 + "]" * 100_000),
        ("deep.jsonl", '{"question": "q", "answer": "a"}\n' + "[" * 100_000 + "\n"),
    ],
)
def test_json_nested_too_deep(tmp_path, capsys, name, text):
    f = tmp_path / name
    f.write_text(text)
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"question": "q", "answer": "a"}\n')
    line = assert_one_line(
        [
            "unlearn",
            "--model",
            tmp_path / "no-model",
            "--forget",
            f,
            "--retain",
            ok,
            "--method",
            "grad_ascent",
            "--out",
            tmp_path / "out",
        ],
        capsys,
        str(f),
        "nested",
    )
    assert not (tmp_path / "out").exists()
    if name.endswith("l"):
        assert f"{f}:2" in line


def test_jsonl_with_a_bad_byte_after_the_first_4096_characters(tmp_path, capsys):
    f = tmp_path / "forget.jsonl"
    good = json.dumps({"question": "q" * 100, "answer": "a" * 100}) + "\n"
    f.write_bytes(good.encode() * 50 + b'{"question": "caf\xe9", "answer": "a"}\n')
    assert_one_line(
        [
            "unlearn",
            "--model",
            tmp_path / "no-model",
            "--forget",
            f,
            "--retain",
            f,
            "--method",
            "grad_ascent",
            "--out",
            tmp_path / "out",
        ],
        capsys,
        f"{f}:51",
        "UTF-8",
    )


@pytest.mark.parametrize("since", ["1000000d", "99999999999w", "0001-01-01T00:00:00+05:00"])
def test_runs_since_out_of_range(tmp_path, capsys, monkeypatch, since):
    monkeypatch.setenv("OBLIVIATE_REGISTRY", str(tmp_path / "registry.sqlite"))
    assert_one_line(["runs", "ls", "--since", since], capsys, "--since", since)


def _run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "results.json").write_text(json.dumps({"results": {"target": {"forget_rouge": 0.9}}, "config": {}}))
    return d


def test_report_results_json_config_not_an_object(tmp_path, capsys):
    d = _run_dir(tmp_path)
    (d / "results.json").write_text(json.dumps({"results": {"target": {"forget_rouge": 0.9}}, "config": [1]}))
    assert_one_line(["report", d, "--out", tmp_path / "r.html"], capsys, str(d / "results.json"), "'config'")
    assert not (tmp_path / "r.html").exists()


def test_report_guard_json_not_an_object(tmp_path, capsys):
    d = _run_dir(tmp_path)
    (d / "guards" / "latent").mkdir(parents=True)
    (d / "guards" / "latent" / "guard.json").write_text("[1]")
    assert_one_line(["report", d, "--out", tmp_path / "r.html"], capsys, str(d / "guards" / "latent" / "guard.json"))
    assert not (tmp_path / "r.html").exists()


def test_report_still_reads_a_well_formed_run(tmp_path, capsys):
    d = _run_dir(tmp_path)
    code, out, err = run_cli(["report", d, "--out", tmp_path / "r.html"], capsys)
    assert code == 0, err
    assert (tmp_path / "r.html").is_file()


def test_serve_guard_json_with_a_list_for_the_name(tmp_path, capsys, target_dir):
    g = tmp_path / "g"
    g.mkdir()
    (g / "guard.json").write_text(json.dumps({"guard": ["latent"]}))
    assert_one_line(["serve", target_dir, "--guard", g, "--port", "0"], capsys, str(g / "guard.json"), "'guard'")


@pytest.fixture
def broken_model(tmp_path, target_dir):
    def make(how):
        d = tmp_path / f"model-{how}"
        shutil.copytree(target_dir, d)
        if how == "truncated":
            w = d / "model.safetensors"
            w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        elif how == "tokenizer":
            t = json.loads((d / "tokenizer.json").read_text())
            del t["model"]
            (d / "tokenizer.json").write_text(json.dumps(t))
        elif how == "config":
            c = json.loads((d / "config.json").read_text())
            c["hidden_size"] += 16
            (d / "config.json").write_text(json.dumps(c))
        return d

    return make


@pytest.mark.parametrize(
    "how, names",
    [
        ("truncated", ["model.safetensors"]),
        ("tokenizer", ["tokenizer.json"]),
        ("config", ["model.safetensors does not fit config.json"]),
    ],
)
def test_serve_a_broken_model_directory(capsys, broken_model, how, names):
    d = broken_model(how)
    assert_one_line(["serve", d, "--port", "0"], capsys, str(d), *names)


def test_eval_a_model_with_a_truncated_weight_file(tmp_path, capsys, broken_model, world_dir):
    d = broken_model("truncated")
    assert_one_line(
        ["eval", "--quiet", "--model", d, "--data", world_dir, "--out", tmp_path / "ev"], capsys, "model.safetensors"
    )
    assert not (tmp_path / "ev").exists()


def test_unlearn_idk_pool_that_is_not_text(tmp_path, capsys, target_dir, world_dir):
    assert_one_line(
        [
            "unlearn",
            "--model",
            target_dir,
            "--forget",
            world_dir / "forget10.jsonl",
            "--retain",
            world_dir / "retain90.jsonl",
            "--method",
            "idk_nll",
            "--idk",
            "/bin/true",
            "--out",
            tmp_path / "out",
        ],
        capsys,
        "/bin/true",
        "UTF-8",
    )
    assert not (tmp_path / "out").exists()
