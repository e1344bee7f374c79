"""The command line: listings, bad input (exit 2, one line, no traceback, no output left), kill -9 + resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from obliviate.cli import main
from obliviate.runs.schema import validate_results
from tests.conftest import shared_data


def run_cli(args, capsys):
    sys.argv = ["obliviate", *map(str, args)]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_bad_input(args, capsys, out_dir, must_contain):
    code, _, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert must_contain in lines[0], lines[0]
    assert not out_dir.exists(), "a failed command must leave no output directory"


def test_env(capsys):
    code, out, _ = run_cli(["env"], capsys)
    assert code == 0 and "torch" in out and "device" in out


def test_ls(capsys):
    code, out, _ = run_cli(["ls", "methods"], capsys)
    assert code == 0 and {"grad_ascent", "grad_diff", "npo", "simnpo", "idk_nll", "idk_dpo"} <= {
        ln.split()[0] for ln in out.splitlines()
    }
    code, out, _ = run_cli(["ls", "metrics"], capsys)
    assert code == 0 and "forget_quality" in out and "privleak" in out


@pytest.fixture()
def unlearn_args(target_dir, world_dir, tmp_path):
    return [
        "unlearn",
        "--model",
        target_dir,
        "--forget",
        world_dir / "forget10.jsonl",
        "--retain",
        world_dir / "retain90.jsonl",
        "--method",
        "npo",
        "--out",
        tmp_path / "out",
    ]


def _with(args, flag, value):
    a = list(args)
    a[a.index(flag) + 1] = value
    return a


def test_unlearn_with_gradient_checkpointing(unlearn_args, tmp_path, capsys):
    code, out, err = run_cli([*unlearn_args, "--steps", "1", "--gradient-checkpointing"], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "config.json").is_file() and "npo: 1 steps" in out


def test_unlearn_max_batch_tokens(unlearn_args, tmp_path, capsys, monkeypatch):
    """The budget reaches training: 2048 by default where the loss splits, what is asked otherwise; a method
    whose loss does not split, or a negative budget, exits 2 before anything is written."""
    import obliviate.engine.train

    budgets, real = [], obliviate.engine.train.train
    monkeypatch.setattr(
        obliviate.engine.train, "train", lambda *a, **kw: budgets.append(a[4].max_batch_tokens) or real(*a, **kw)
    )
    for extra in ([], ["--max-batch-tokens", "64"], ["--max-batch-tokens", "0"]):
        code, out, err = run_cli(
            [*_with(unlearn_args, "--out", tmp_path / f"o{len(budgets)}"), "--steps", "1", *extra], capsys
        )
        assert code == 0 and "npo: 1 steps" in out, err
    assert budgets == [2048, 64, 0]
    assert_bad_input(
        [*_with(unlearn_args, "--method", "rmu"), "--max-batch-tokens", "64"],
        capsys,
        tmp_path / "out",
        "RMU's loss does not split",
    )
    assert_bad_input([*unlearn_args, "--max-batch-tokens", "-5"], capsys, tmp_path / "out", ">= 0")
    assert_bad_input([*unlearn_args, "--max-batch-tokens", "many"], capsys, tmp_path / "out", "--max-batch-tokens")


def test_out_of_memory_is_one_line_with_what_to_lower(unlearn_args, tmp_path, capsys, monkeypatch):
    """Torch running out of memory (a refused CPU allocation under a limit, a GPU's OutOfMemoryError): exit 1,
    one line naming the failed allocation and the options that lower a step's memory, no traceback."""
    import obliviate.engine.train

    def oom(*a, **kw):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 6429868032 bytes. Error code 12 (Cannot allocate memory)"
        )

    monkeypatch.setattr(obliviate.engine.train, "train", oom)
    code, _, err = run_cli([*unlearn_args, "--steps", "1"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "out of memory (an allocation of 6.4 GB failed)" in lines[0] and "--max-batch-tokens" in lines[0]
    assert "--resume" in lines[0]


def test_missing_file(unlearn_args, tmp_path, capsys):
    assert_bad_input(
        _with(unlearn_args, "--forget", tmp_path / "nope.jsonl"), capsys, tmp_path / "out", "file not found"
    )


def test_malformed_line_names_file_and_line(unlearn_args, world_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = (world_dir / "forget10.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-5]
    bad.write_text("\n".join(lines) + "\n")
    assert_bad_input(_with(unlearn_args, "--forget", bad), capsys, tmp_path / "out", f"{bad}:3")


def test_empty_forget_split(unlearn_args, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_bad_input(_with(unlearn_args, "--forget", empty), capsys, tmp_path / "out", "empty")


def test_unknown_method_suggests(unlearn_args, tmp_path, capsys):
    assert_bad_input(_with(unlearn_args, "--method", "npp"), capsys, tmp_path / "out", "did you mean 'npo'")


def test_not_a_model(unlearn_args, world_dir, tmp_path, capsys):
    assert_bad_input(_with(unlearn_args, "--model", world_dir), capsys, tmp_path / "out", "not a model directory")


def test_never_writes_into_input_model(unlearn_args, target_dir, capsys):
    before = sorted(p.name for p in target_dir.iterdir())
    code, _, err = run_cli(_with(unlearn_args, "--out", target_dir / "sub"), capsys)
    assert code == 2 and "never written" in err
    assert sorted(p.name for p in target_dir.iterdir()) == before


def test_diverged_loss_saves_nothing(unlearn_args, tmp_path, capsys):
    assert_bad_input([*unlearn_args, "--option", "gamma=1e39"], capsys, tmp_path / "out", "loss became")


def test_eval_writes_schema(target_dir, world_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code, stdout, err = run_cli(
        ["eval", "--model", f"target={target_dir}", "--oracle", target_dir, "--data", world_dir, "--out", out], capsys
    )
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert validate_results(doc) == []
    assert set(doc["results"]) == {"oracle", "target"}
    assert doc["results"]["target"]["forget_quality"] == pytest.approx(1.0)  # a model against itself
    assert doc["higher_is_better"]["forget_quality"] is True
    assert (out / "report.md").read_text().startswith("# obliviate report")
    n = sum(1 for _ in open(out / "samples.jsonl"))
    assert n == 2 * sum(doc["n_samples"].values())


def _cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return [sys.executable, "-c", "from obliviate.cli import main; main()", *map(str, args)], env


def test_entry_point_exit_code_is_2(tmp_path):
    cmd, env = _cli(
        "unlearn",
        "--model",
        tmp_path,
        "--forget",
        tmp_path / "f.jsonl",
        "--retain",
        tmp_path / "r.jsonl",
        "--method",
        "npo",
        "--out",
        tmp_path / "o",
    )
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


@pytest.mark.slow  # about 85 s (two whole unlearning runs and a kill): `make test-slow`
def test_kill_9_then_resume_matches_uninterrupted(target_dir, world_dir, tmp_path):
    base = [
        "unlearn",
        "--model",
        target_dir,
        "--forget",
        world_dir / "forget10.jsonl",
        "--retain",
        world_dir / "retain90.jsonl",
        "--method",
        "npo",
        "--steps",
        400,
        "--checkpoint-every",
        20,
        "--threads",
        1,
        "--seed",
        3,
    ]
    cmd, env = _cli(*base, "--out", tmp_path / "straight")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    cmd, env = _cli(*base, "--out", killed)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoint" / "state.json").is_file() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoint").is_dir() and not (killed / "train_log.json").exists(), "killed mid-run"
    cmd, env = _cli(*base, "--out", killed, "--resume")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)

    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "resumed weights differ"
    la = json.loads((tmp_path / "straight" / "train_log.json").read_text())["history"]
    lb = json.loads((killed / "train_log.json").read_text())["history"]
    assert la == lb


def test_world_cli_is_deterministic(tmp_path, capsys):
    for name in ("a", "b"):
        code, out, _ = run_cli(["world", "--out", tmp_path / name, "--seed", 7], capsys)
        assert code == 0 and "forget10" in out
    for f in (tmp_path / "a").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()
    code, _, err = run_cli(["world", "--out", tmp_path / "a"], capsys)
    assert code == 2 and "not empty" in err


def test_demo_refuses_foreign_directory(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    code, _, err = run_cli(["demo", "--out", tmp_path], capsys)
    assert code == 2 and "not an earlier demo" in err and (tmp_path / "precious.txt").exists()
    code, _, err = run_cli(["demo", "--out", tmp_path / "d", "--methods", "npo,gradient_ascent"], capsys)
    assert code == 2 and "unknown method 'gradient_ascent'" in err and not (tmp_path / "d").exists()


def test_finetune_then_unlearn_with_lora_and_tofu_idk_pool(world_dir, tmp_path, capsys):
    code, out, err = run_cli(
        ["finetune", "--data", world_dir, "--out", tmp_path / "m", "--steps", 5, "--only", "target"], capsys
    )
    assert code == 0, err
    assert (tmp_path / "m" / "target" / "model.safetensors").is_file() and not (tmp_path / "m" / "oracle").exists()
    args = [
        "unlearn",
        "--model",
        tmp_path / "m" / "target",
        "--forget",
        world_dir / "forget01.jsonl",
        "--retain",
        world_dir / "retain99.jsonl",
        "--method",
        "idk_dpo",
        "--steps",
        3,
        "--lora-r",
        4,
        "--out",
        tmp_path / "u",
        "--idk",
        shared_data("tofu/idontknow.jsonl"),
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    log = json.loads((tmp_path / "u" / "train_log.json").read_text())
    assert len(log["history"]) == 3 and not (tmp_path / "u" / "checkpoint").exists()
    assert not any("lora" in k for k in load_file(str(tmp_path / "u" / "model.safetensors")))
