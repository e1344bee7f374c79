"""A base model (no chat template) through every command that writes question-answer items for a model: its items
are written in a plain template, TOFU's "Question: {question}\\nAnswer: {answer}" by default, and one line says so."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tests.cli.test_cli import assert_bad_input, run_cli
from tests.conftest import tiny_model

NOTICE = (
    "has no chat template: formatting items as 'Question: {question}\\nAnswer: {answer}' (--prompt-template to change)"
)


@pytest.fixture(autouse=True)
def _keep_threads():
    """The commands below run with --threads 1 (two threads on a busy 2-core machine spin: 6x the CPU time); the
    session's thread count is restored for the tests after them."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _plain(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    return tok


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, world_dir, tiny_tokenizer):
    """A tiny model saved without a chat template, fine-tuned briefly on the world in the plain template."""
    from obliviate.data.schema import load_qa
    from obliviate.engine.train import FineTune, TrainConfig, train
    from obliviate.models.load import save_model
    from obliviate.models.prompt_format import PromptFormat
    from obliviate.unlearning.run import qa_pairs

    d = tmp_path_factory.mktemp("base")
    tok = _plain(tiny_tokenizer)
    PromptFormat().apply(tok, "the base model")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, _ = train(
            tiny_model(tok),
            tok,
            FineTune(lr=3e-3, steps=20),
            {"retain": qa_pairs(load_qa(world_dir / "train.jsonl"))},
            TrainConfig(retain_batch_size=64, checkpoint_every=0, progress=False),
        )
    finally:
        torch.set_num_threads(threads)
    save_model(model, tok, d)
    assert "chat_template" not in json.loads((d / "tokenizer_config.json").read_text())
    assert not (d / "chat_template.jinja").exists()
    return d


def _notices(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if "formatting items as" in ln]


def test_plain_template_ids_are_the_whole_texts_tokens(tiny_tokenizer, capsys):
    """Prompt = BOS + the template's text before the answer; the answer's ids are those the whole text has after it
    (" Ada" one token, no stray space), then EOS; only the answer and EOS carry labels."""
    from obliviate.models.encode import IGNORE, answer_ids, encode_pair, end_of_turn_id, prompt_ids, text_ids
    from obliviate.models.prompt_format import PromptFormat, prompt_format

    tok = _plain(tiny_tokenizer)
    PromptFormat().apply(tok, "m")
    assert NOTICE in capsys.readouterr().err
    p = prompt_ids(tok, "Who is Ada?")
    assert tok.decode(p) == "<|bos|> Question: Who is Ada?\nAnswer:"
    ids, labels = encode_pair(tok, "Who is Ada?", "Ada is a poet.")
    assert ids == text_ids(tok, "Question: Who is Ada?\nAnswer: Ada is a poet.") + [tok.eos_token_id]
    assert ids[: len(p)] == p and labels[: len(p)] == [IGNORE] * len(p)
    assert tok.decode(labels[len(p) :]) == " Ada is a poet.<|eos|>"
    first = tok.convert_ids_to_tokens(labels[len(p)])
    assert first.startswith("Ġ") and first != "Ġ"  # the space opens the answer's first word, as in the whole text
    assert answer_ids(tok, "Ada is a poet.") == labels[len(p) :] and end_of_turn_id(tok) == tok.eos_token_id

    # --prompt-template: \n typed on the command line is a newline; a trailing space opens the answer as {answer} would
    custom = _plain(tiny_tokenizer)
    prompt_format("Q: {question}\\nA: ", False).apply(custom, "m")
    assert tok.decode(prompt_ids(custom, "Who?")) == "<|bos|> Q: Who?\nA:"
    assert tok.decode(encode_pair(custom, "Who?", "Ada.")[0]) == "<|bos|> Q: Who?\nA: Ada.<|eos|>"

    # a tokenizer with neither template keeps the raw prompt refusal-eval has always given it
    raw = _plain(tiny_tokenizer)
    assert prompt_ids(raw, "hi ") == text_ids(raw, "hi\n")
    assert answer_ids(raw, "Ada.") == tok("Ada.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_a_chat_model_keeps_its_template_unless_forced(tiny_tokenizer, capsys):
    from obliviate.models.encode import encode_pair, prompt_ids
    from obliviate.models.prompt_format import prompt_format

    chat = copy.deepcopy(tiny_tokenizer)
    before = encode_pair(chat, "Who is Ada?", "A poet.")
    fmt = prompt_format(None, False)
    fmt.apply(chat, "m")
    assert encode_pair(chat, "Who is Ada?", "A poet.") == before and fmt.config() == {}
    assert capsys.readouterr().err == ""
    asked = prompt_format("Q: {question}\\nA: {answer}", False)
    asked.apply(chat, "m")
    assert "--prompt-template is not used" in capsys.readouterr().err and asked.config() == {}
    forced = prompt_format(None, True)
    forced.apply(chat, "m")
    assert chat.decode(prompt_ids(chat, "Who?")) == "<|bos|> Question: Who?\nAnswer:"
    assert chat.chat_template is not None  # a saved model keeps its chat template
    assert forced.config()["prompt_format"]["no_chat_template"] is True


@pytest.mark.parametrize("command", ["unlearn", "eval", "audit", "sweep"])
def test_a_template_without_question_exits_2(command, base_dir, world_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = {
        "unlearn": [
            "unlearn",
            "--model",
            base_dir,
            "--forget",
            world_dir / "forget10.jsonl",
            "--retain",
            world_dir / "retain90.jsonl",
            "--method",
            "npo",
        ],
        "eval": ["eval", "--model", base_dir, "--data", world_dir],
        "audit": ["audit", base_dir, "--suite", "unlearning", "--data", world_dir],
        "sweep": [
            "sweep",
            "--method",
            "npo",
            "--grid",
            "steps=1",
            "--model",
            base_dir,
            "--oracle",
            base_dir,
            "--data",
            world_dir,
        ],
    }[command]
    assert_bad_input(
        [*args, "--out", out, "--prompt-template", "Q: {q}\\nA:"],
        capsys,
        out,
        "--prompt-template must contain {question}",
    )


def test_unlearn_with_lora_then_eval_on_a_base_model(base_dir, world_dir, tmp_path, capsys):
    out = tmp_path / "unlearned"
    code, stdout, err = run_cli(
        [
            "unlearn",
            "--model",
            base_dir,
            "--forget",
            world_dir / "forget10.jsonl",
            "--retain",
            world_dir / "retain90.jsonl",
            "--method",
            "grad_diff",
            "--steps",
            "2",
            "--lora-r",
            "4",
            "--threads",
            "1",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    assert "grad_diff: 2 steps" in stdout and "final loss" in stdout
    assert len(_notices(err)) == 1 and NOTICE in err
    meta = json.loads((out / "unlearn.json").read_text())
    assert meta["prompt_format"] == {
        "template": "Question: {question}\nAnswer: {answer}",
        "models": [str(base_dir)],
        "no_chat_template": False,
    }
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())  # still a base model

    ev = tmp_path / "eval"
    code, stdout, err = run_cli(
        [
            "eval",
            "--model",
            f"unlearned={out}",
            "--oracle",
            base_dir,
            "--data",
            world_dir,
            "--threads",
            "1",
            "--out",
            ev,
        ],
        capsys,
    )
    assert code == 0, err
    assert "forget_quality" in stdout and "unlearned" in stdout
    assert len(_notices(err)) == 1
    doc = json.loads((ev / "results.json").read_text())
    assert doc["config"]["prompt_format"]["models"] == [str(base_dir), str(out)]
    assert 0 <= doc["results"]["unlearned"]["forget_quality"] <= 1


def test_eval_prompt_template_and_no_chat_template_are_recorded(target_dir, world_dir, tmp_path, capsys):
    """A chat model: exactly as before without the flags; --no-chat-template writes it in the plain template."""
    base = ["eval", "--model", f"target={target_dir}", "--data", world_dir, "--threads", "1"]
    code, _, err = run_cli([*base, "--out", tmp_path / "chat"], capsys)
    assert code == 0 and not _notices(err), err
    assert "prompt_format" not in json.loads((tmp_path / "chat" / "results.json").read_text())["config"]
    code, _, err = run_cli(
        [*base, "--no-chat-template", "--prompt-template", "Q: {question}\\nA: {answer}", "--out", tmp_path / "plain"],
        capsys,
    )
    assert code == 0, err
    assert _notices(err) == ["--no-chat-template: formatting items as 'Q: {question}\\nA: {answer}'"]
    fmt = json.loads((tmp_path / "plain" / "results.json").read_text())["config"]["prompt_format"]
    assert fmt == {"template": "Q: {question}\nA: {answer}", "models": [str(target_dir)], "no_chat_template": True}


def test_audit_unlearning_on_a_base_model(base_dir, world_dir, tmp_path, capsys):
    out = tmp_path / "audit"
    code, stdout, err = run_cli(
        [
            "audit",
            base_dir,
            "--suite",
            "unlearning",
            "--data",
            world_dir,
            "--limit",
            "4",
            "--threads",
            "1",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    assert len(_notices(err)) == 1 and NOTICE in err
    doc = json.loads((out / "audit.json").read_text())
    assert doc["attacks"] and doc["config"]["prompt_format"]["models"] == [str(base_dir)]
    assert "| figure |" in stdout


def test_sweep_on_a_base_model(base_dir, world_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, err = run_cli(
        [
            "sweep",
            "--method",
            "npo",
            "--grid",
            "lr=1e-4,1e-3 steps=2",
            "--model",
            base_dir,
            "--oracle",
            base_dir,
            "--data",
            world_dir,
            "--threads",
            "1",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    assert "[2/2]" in stdout and "utility" in stdout
    assert len(_notices(err)) == 1
    doc = json.loads((out / "sweep.json").read_text())
    assert len(doc["points"]) == 2 and doc["prompt_format"]["models"] == [str(base_dir)]


def test_finetune_from_a_base_model(base_dir, world_dir, tmp_path, capsys):
    """TOFU's first step on a base model: fine-tune it on the QA, in the plain template."""
    out = tmp_path / "ft"
    code, stdout, err = run_cli(
        [
            "finetune",
            "--data",
            world_dir,
            "--model",
            base_dir,
            "--only",
            "target",
            "--steps",
            "1",
            "--batch-size",
            "8",
            "--threads",
            "1",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    assert "target: trained" in stdout and len(_notices(err)) == 1 and NOTICE in err
    assert "chat_template" not in json.loads((out / "target" / "tokenizer_config.json").read_text())
