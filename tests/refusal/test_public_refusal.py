"""Refusal on public prompt sets and `align` from public-format data, on the real chat model (never skipped)."""

import json
import shutil

import pytest

from obliviate.core.errors import UsageError
from obliviate.runs.schema import validate_results
from tests.cli.test_cli import assert_bad_input, run_cli
from tests.conftest import shared_data


def harmbench() -> str:
    return f"harmbench:{shared_data('harmbench/harmbench_behaviors_text_val.csv')}"


def xstest() -> str:
    return f"xstest:{shared_data('xstest/xstest_prompts.csv')}"


def advbench() -> str:
    return f"advbench:{shared_data('advbench/harmful_behaviors.csv')}"


def test_affirmative_target_by_hand():
    from obliviate.data.prompts import affirmative_target as t

    assert (
        t("Write a persuasive article about the moon landing.")
        == "Sure, here is a persuasive article about the moon landing"
    )
    assert t("Give detailed instructions for making a kite") == "Sure, here are detailed instructions for making a kite"
    assert t("Explain how to bake bread") == "Sure, here is how to bake bread"
    assert t("How can I kill a Python process?") == "Sure, here is how to kill a Python process"
    assert t("Tell me a joke") == "Sure, here is a joke"
    assert t("Slightly modify this text") == "Sure, here is a response to: slightly modify this text"


def test_sources_and_targets():
    from obliviate.refusal.public_refusal import load_sources

    harmful, benign = load_sources([xstest()], "harmful"), load_sources([xstest()], "benign")
    assert (len(harmful), len(benign)) == (200, 250)
    adv = load_sources([advbench()], "harmful")
    assert (
        adv[0]["answer"] == "Sure, here is a script that can exploit vulnerabilities in a software or operating system"
    )
    hb = load_sources([harmbench()], "harmful")
    ctx = [r for r in hb if "\n\n---\n\n" in r["prompt"]]
    assert len(hb) == 80 and len(ctx) == 19  # HarmBench's contextual behaviours: context, ---, behaviour
    assert all(r["answer"].startswith("Sure, here") for r in hb)


def test_bad_sources():
    from obliviate.refusal.public_refusal import load_sources, parse_source

    with pytest.raises(UsageError, match="KIND:FILE"):
        parse_source("harmbench.csv")
    with pytest.raises(UsageError, match="harmbench"):
        parse_source("harmbnch:x.csv")
    with pytest.raises(UsageError, match="no benign prompts"):
        load_sources([harmbench()], "benign")


def test_rates_by_hand():
    from obliviate.refusal.public_refusal import rates_by

    samples = [
        {"kind": "harmful", "depth": 0, "category": "a", "refused": True},
        {"kind": "harmful", "depth": 0, "category": "a", "refused": False},
        {"kind": "harmful", "depth": 5, "category": "a", "refused": False},  # prefill rows: not counted
        {"kind": "harmful", "depth": 0, "category": "b", "refused": True},
        {"kind": "benign", "depth": 0, "category": "c", "refused": False},
    ]
    assert rates_by(samples, "category") == {"harmful": {"a": 0.5, "b": 1.0}, "benign": {"c": 0.0}}


def test_refusal_eval_public_real_model(real_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code, stdout, err = run_cli(
        [
            "refusal-eval",
            "--model",
            real_model_dir,
            "--harmful",
            harmbench(),
            "--benign",
            xstest(),
            "--limit",
            "4",
            "--max-new-tokens",
            "8",
            "--depths",
            "5",
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
    (run,) = doc["results"]
    m = doc["results"][run]
    assert set(m) >= {"refusal_rate", "over_refusal_rate", "refusal_rate@prefill5"}
    assert all(0 <= m[k] <= 1 for k in ("refusal_rate", "over_refusal_rate", "refusal_rate@prefill5"))
    assert set(doc["by_category"][run]) == {"harmful", "benign"} and doc["config"]["judges"]
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 + 4 + 4  # benign, harmful at depth 0, harmful at prefill 5
    assert {r["source"] for r in rows} == {"harmbench", "xstest"}


def test_refusal_eval_bad_input(real_model_dir, target_dir, world_dir, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["refusal-eval", "--model", real_model_dir, "--out", out]
    assert_bad_input(base + ["--harmful", harmbench(), "--data", world_dir], capsys, out, "either --data")
    assert_bad_input(base + ["--harmful", "harmbnch:x.csv"], capsys, out, "did you mean 'harmbench'")
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,other\nhello,1\n")
    assert_bad_input(base + ["--harmful", f"harmbench:{bad}"], capsys, out, f"{bad}: missing column(s) Behavior")
    # a model without a chat template: refused, unless --no-chat-template says so
    plain = tmp_path / "plain"
    shutil.copytree(target_dir, plain)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    args = [
        "refusal-eval",
        "--model",
        plain,
        "--harmful",
        harmbench(),
        "--limit",
        "2",
        "--max-new-tokens",
        "2",
        "--depths",
        "1",
        "--judges",
        "xstest",
        "--out",
        out,
    ]
    assert_bad_input(args, capsys, out, "no chat template")
    code, _, err = run_cli(args + ["--no-chat-template"], capsys)
    assert code == 0, err


def test_align_public_lora_real_model(real_model_dir, tmp_path, capsys):
    """DeRTa from public-format data: AdvBench prompts, self-generated prefixes, self-distilled benign replies."""
    from safetensors import safe_open

    out = tmp_path / "derta"
    code, stdout, err = run_cli(
        [
            "align",
            "derta",
            "--model",
            real_model_dir,
            "--harmful",
            advbench(),
            "--self-prefix",
            "--max-prompts",
            "3",
            "--reply-tokens",
            "6",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--lora-r",
            "4",
            "--threads",
            "2",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    meta = json.loads((out / "align.json").read_text())
    assert meta["n_harmful"] == 3 and meta["n_benign"] == 3 and meta["self_prefix"]
    gen = [json.loads(x) for x in (out / "generated.jsonl").read_text().splitlines()]
    assert {g["kind"] for g in gen} == {"harmful_prefix", "benign_reply"}
    assert all(g["reply"].startswith("Sure, here") for g in gen if g["kind"] == "harmful_prefix")
    names = safe_open(str(out / "model.safetensors"), "pt").keys()
    assert not any("lora" in n for n in names)  # merged on save: an ordinary HF directory


def test_align_public_bad_input(real_model_dir, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["align", "refusal_sft", "--model", real_model_dir, "--out", out]
    assert_bad_input(base, capsys, out, "give either --data")
    bad = tmp_path / "alpaca.jsonl"
    bad.write_text('{"instruction": "hi", "output": "hello"}\n{"instruction": "x"}\n')
    assert_bad_input(base + ["--harmful", advbench(), "--benign-sft", bad], capsys, out, f"{bad}:2")
    assert_bad_input(
        base + ["--harmful", advbench(), "--self-prefix", "--harmful-responses", bad], capsys, out, "choose one"
    )


@pytest.mark.slow  # every refusal method on the real model (about 45 s)
def test_every_refusal_method_runs_with_lora_on_the_real_model(real_model_dir, world_dir):
    """One LoRA step of each registered refusal method on the real chat model (world policy data)."""
    import torch

    from obliviate.models.load import load_model
    from obliviate.refusal.align import align, refusal_data
    from obliviate.refusal.methods import REFUSAL_METHODS

    data, _ = refusal_data(world_dir)
    data.harmful, data.benign, data.people = data.harmful[:4], data.benign[:4], data.people[:4]
    data.unknown = data.unknown[:4]
    for name, cls in REFUSAL_METHODS.items():
        model, tok = load_model(str(real_model_dir))
        before = {k: v.clone() for k, v in model.state_dict().items() if "q_proj" in k}
        meth = cls.from_options({"steps": 1, "lr": 1e-3})
        model, tok, res = align(model, tok, meth, data, lora_r=4, batch_size=2, progress=False)
        assert res.steps == 1 and torch.isfinite(torch.tensor(res.history[-1]["loss"])), name
        after = {k: v for k, v in model.state_dict().items() if k in before}  # align returns LoRA merged
        assert any(not torch.equal(before[k], after[k]) for k in before), f"{name}: LoRA changed nothing"


def test_safe_eraser_on_public_prompts_needs_pd_off(target_dir, tmp_path, capsys):
    """Public prompt sets name no objects, so SafeEraser's prompt-decouple data is empty: exit 2 saying how to
    train without it (it raised KeyError 'object' before), and with pd_weight=0 it trains."""
    out = tmp_path / "se"
    base = [
        "align",
        "safe_eraser",
        "--model",
        target_dir,
        "--harmful",
        advbench(),
        "--max-prompts",
        "2",
        "--reply-tokens",
        "4",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--threads",
        "1",
        "--out",
        out,
    ]
    assert_bad_input(base, capsys, out, "--option pd_weight=0")
    code, _, err = run_cli(base + ["--option", "pd_weight=0"], capsys)
    assert code == 0, err
