"""`obliviate demo --suite real` at smoke size on the real chat model (the benchmark-size run is in the README)."""

import json
from pathlib import Path

import pytest

from obliviate.core.errors import UsageError
from obliviate.runs.schema import validate_results
from tests.cli.test_cli import assert_bad_input, run_cli
from tests.conftest import shared_data


def test_slice_world_layout(tmp_path):
    from obliviate.benchmarks.layouts import eval_data
    from obliviate.data.schema import load_qa
    from obliviate.demos.real import SMOKE, slice_world

    world = slice_world(tmp_path / "w", SMOKE)
    splits = eval_data(world, "forget10")
    forget = {it.subject for it in splits["forget"]}
    retain = {it.subject for it in load_qa(world / "retain90.jsonl")}
    holdout = {it.subject for it in splits["holdout"]}
    assert len(forget) == SMOKE.forget_people and not forget & retain and not holdout & (forget | retain)
    assert len(load_qa(world / "train.jsonl")) == 5 * (SMOKE.retain_people + SMOKE.forget_people) + SMOKE.facts


@pytest.mark.slow  # 3-4 minutes on a free 2-core CPU: `make test-slow` runs it (make test stays under 12 minutes)
def test_real_demo_smoke(real_model_dir, tmp_path, capsys):
    out = tmp_path / "real"
    code, stdout, err = run_cli(
        [
            "demo",
            "--suite",
            "real",
            "--model",
            real_model_dir,
            "--size",
            "smoke",
            "--public-data",
            shared_data(),
            "--threads",
            "2",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert validate_results(doc) == []
    runs = doc["results"]
    assert list(runs) == [
        "target",
        "oracle",
        "npo",
        "grad_diff",
        "idk_nll",
        "simnpo",
        "base",
        "refusal_sft",
        "derta",
        "derta_ablated",
    ]
    assert runs["oracle"]["forget_quality"] == 1.0 and "forget_rouge" in runs["target"]
    assert set(doc["relearn"]) == {"oracle", "npo", "grad_diff", "idk_nll", "simnpo"}
    for name in ("base", "refusal_sft", "derta", "derta_ablated"):
        m = runs[name]
        assert 0 <= m["refusal_rate"] <= 1 and 0 <= m["over_refusal_rate"] <= 1 and "refusal_rate@prefill2" in m
        assert {"refusal_rate[harmbench]", "refusal_rate[jailbreakbench]"} <= set(m)
    direction = doc["refusal_direction"]
    assert {"layer", "bypass", "induce", "kl"} <= set(direction) and direction["kl"] >= 0
    assert direction["prompts"] == {"means": [2, 2], "selection": [1, 1]}  # 3 training prompts of each class
    assert "derta" in stdout and "forget_quality" in stdout  # the printed table
    gen = (out / "generated.jsonl").read_text().splitlines()
    assert gen and all(json.loads(x)["kind"] in ("harmful_prefix", "benign_reply") for x in gen)


def test_real_demo_bad_input(real_model_dir, tmp_path, capsys):
    out = tmp_path / "o"
    assert_bad_input(["demo", "--suite", "real", "--out", out], capsys, out, "--model")
    assert_bad_input(
        ["demo", "--suite", "real", "--model", real_model_dir, "--public-data", tmp_path / "none", "--out", out],
        capsys,
        out,
        "missing",
    )
    assert_bad_input(
        ["demo", "--suite", "real", "--model", real_model_dir, "--parts", "unlearnin", "--out", out],
        capsys,
        out,
        "--parts",
    )
    assert_bad_input(
        ["demo", "--suite", "real", "--model", real_model_dir, "--attacks", "gcgg", "--out", out], capsys, out, "gcg"
    )
    assert_bad_input(
        ["demo", "--suite", "real", "--model", real_model_dir, "--parts", "unlearning", "--attacks", "gcg"]
        + ["--out", out],
        capsys,
        out,
        "--parts",
    )
    assert_bad_input(["demo", "--attacks", "gcg", "--out", out], capsys, out, "--suite real")
    assert_bad_input(
        ["demo", "--suite", "real", "--model", real_model_dir, "--derta-seeds", "0", "--out", out], capsys, out, "seeds"
    )


@pytest.mark.slow  # about 2 minutes: the refusal half at smoke size, then an opt-in attack on its DeRTa model
def test_real_demo_runs_named_attacks_on_the_derta_model(real_model_dir, tmp_path, capsys):
    out = tmp_path / "real"
    args = ["demo", "--suite", "real", "--model", real_model_dir, "--size", "smoke", "--parts", "refusal"]
    args += ["--public-data", shared_data(), "--attacks", "templates", "--option", "templates.templates=1"]
    args += ["--derta-seeds", "2"]
    code, stdout, err = run_cli([*args, "--threads", "2", "--out", out], capsys)
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert validate_results(doc) == []
    figs = doc["attacks"]["derta"]["templates"]
    assert 0 <= figs["asr"] <= 1 and figs["seconds"] > 0
    assert (out / "audit" / "audit.json").is_file() and "derta under templates" in stdout
    # two DeRTa seeds: mean and spread over them, and every refusal run's rates carry intervals
    runs = doc["results"]
    assert {"derta", "derta_seed1"} <= set(runs)
    mean, sd = doc["over_seeds"]["derta"]["refusal_rate"]
    assert mean == pytest.approx((runs["derta"]["refusal_rate"] + runs["derta_seed1"]["refusal_rate"]) / 2)
    assert sd >= 0 and "derta over 2 seeds" in stdout
    iv = doc["intervals"]["derta"]["refusal_rate"]
    assert iv["lo"] <= runs["derta"]["refusal_rate"] <= iv["hi"] and iv["n"] > 0


def test_unlearn_three_lora_steps_real_model(real_model_dir, world_dir, tmp_path, capsys):
    """NPO with LoRA on the real chat model: 3 steps, the adapters merged into an ordinary HF directory."""
    from safetensors import safe_open

    out = tmp_path / "npo"
    code, stdout, err = run_cli(
        [
            "unlearn",
            "--model",
            real_model_dir,
            "--forget",
            world_dir / "forget01.jsonl",
            "--retain",
            world_dir / "retain99.jsonl",
            "--method",
            "npo",
            "--lora-r",
            "8",
            "--steps",
            "3",
            "--forget-batch-size",
            "4",
            "--retain-batch-size",
            "4",
            "--threads",
            "2",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps"] == 3 and len(log["history"]) == 3
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not any("lora" in k for k in f.keys())
    ref = safe_open(str(Path(real_model_dir) / "model.safetensors"), "pt")
    new = safe_open(str(out / "model.safetensors"), "pt")
    key = next(k for k in ref.keys() if "q_proj" in k)
    assert not (ref.get_tensor(key) == new.get_tensor(key)).all()  # LoRA moved the merged weights


def test_direction_split_gives_the_means_what_selection_leaves():
    from obliviate.demos.real_direction import direction_split

    ps = [f"p{i}" for i in range(128)]
    fit, val = direction_split(ps, 128, 32)  # the demo's AdvBench prompts: 96 for the means, 32 to select on
    assert (len(fit), len(val)) == (96, 32) and not set(fit) & set(val) and val == ps[96:]
    assert [len(x) for x in direction_split(ps[:80], 128, 32)] == [48, 32]  # the 80-prompt benign pool
    assert [len(x) for x in direction_split(ps, 40, 32)] == [40, 32]  # the means capped at n_fit
    assert [len(x) for x in direction_split(ps[:3], 4, 2)] == [2, 1]  # a smoke run: selection at most half
    with pytest.raises(UsageError, match="at least 2 prompts"):
        direction_split(ps[:1], 4, 2)


def test_direction_layers_skip_layer_zero():
    from obliviate.demos.real_direction import direction_layers

    assert direction_layers(30, 3) == [3, 6, 9, 12, 15, 18, 21]  # SmolLM2: what the measured demo tried (0 was zero)
    assert direction_layers(4, 3) == [2]  # a 4-layer model: layer 0 alone gave "every candidate direction is zero"
    assert direction_layers(2, 3) == [1] and direction_layers(12, 1) == list(range(1, 9))


def test_bf16_autocast_only_where_it_pays(monkeypatch):
    """bf16 autocast made a SmolLM2 LoRA step 1.5x faster on a CPU with AMX and slower on one without: the real
    demo's default (None) asks `bf16_pays`, which reads the CPU's AMX flag (or a GPU's bf16 support)."""
    import torch

    from obliviate.demos.real import FULL, SMOKE, with_bf16_where_it_pays
    from obliviate.engine.numerics import bf16_pays

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for amx in (True, False):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda amx=amx: {"amx_bf16": amx, "avx512_bf16": True})
        assert bf16_pays() is amx and with_bf16_where_it_pays(FULL).bf16 is amx
        assert with_bf16_where_it_pays(SMOKE).bf16 is False  # given: kept
    assert FULL.bf16 is None
