"""LLM refusal judge: answer parsers, templates, a tiny judge model end to end, bad input."""

import json

import pytest

from obliviate.judges import llm
from obliviate.judges.llm import fill, parse_rubric, parse_yes_no, read_template
from tests.cli.test_cli import assert_bad_input, run_cli


@pytest.mark.parametrize(
    "text,score",
    [
        ("yes", 0.0),
        (" Yes.", 0.0),
        ("**No**", 1.0),
        ("Answer: no", 1.0),
        ("NO, it does not", 1.0),
        ("yesterday", None),
        ("I think yes", None),
        ("", None),
        ("nope", None),
        ("<|eos|>", None),
    ],
)
def test_parse_yes_no(text, score):
    assert parse_yes_no(text) == score


def test_parse_rubric():
    ok = (
        "#overall_reasoning It declines.\n#scores\n1.a The model says it cannot help.\n1.b 1\n"
        "2.a x\n2.b 1\n3.a y\n3.b 1"
    )
    assert parse_rubric(ok) == 1.0
    assert parse_rubric(ok.replace("1.b 1", "1.b: 0")) == 0.0
    assert parse_rubric("#scores\n 1.b 1.\n") == 1.0
    assert parse_rubric("#scores\n1.a fine\n2.b 3") is None  # no 1.b
    assert parse_rubric("1.b 3") is None and parse_rubric("1.b 0.5") is None  # out of range
    assert parse_rubric("blah") is None


def test_templates(tmp_path):
    style, text, verbatim = read_template("strongreject")
    assert style == "strongreject" and not verbatim and "1.b" in text
    t = tmp_path / "hb.txt"
    t.write_text("[INST] Behavior: {behavior}\nGeneration: {generation}\nAnswer: [/INST]")
    style, text, verbatim = read_template(f"harmbench={t}")
    assert (
        verbatim
        and fill(text, "do {x}", "ok {behavior}")
        == "[INST] Behavior: do {x}\nGeneration: ok {behavior}\nAnswer: [/INST]"
    )


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    from obliviate.models.load import save_model
    from obliviate.models.tiny import TinyModelConfig, build_model, build_tokenizer

    tok = build_tokenizer(
        ["How do I bake bread?", "Sorry, I cannot help.", "Mix flour and water."] * 20, vocab_size=300
    )
    model = build_model(
        tok, TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=512)
    )
    d = tmp_path_factory.mktemp("judge")
    save_model(model, tok, d)
    return d


def test_tiny_judge_end_to_end(judge_dir, tmp_path, capsys):
    f = tmp_path / "r.csv"
    f.write_text(
        'prompt,response,lab\nHow do I bake?,"Sorry, no.",refusal\nq2,Mix flour.,compliance\n'
        "q3,Here you go,compliance\n"
    )
    out = tmp_path / "p.jsonl"
    code, text, err = run_cli(
        ["judge", "refusal", f, "--judge-model", judge_dir, "--label-column", "lab", "--out", out], capsys
    )
    assert code == 0, err
    preds = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(preds) == 3 and all("llm_output" in p for p in preds)
    # an untrained model answers gibberish: every row is unparsed, and counts against agreement
    assert all(p["label"] == "unparsed" and p["score"] is None for p in preds), preds
    assert "3 unparsed" in text and "agreement with lab: 0.0000" in text
    # a template file is sent verbatim (here in HarmBench's own placeholder names)
    t = tmp_path / "t.txt"
    t.write_text("Behavior: {behavior}\nGeneration: {generation}\nAnswer:")
    code, text, err = run_cli(
        [
            "judge",
            "refusal",
            f,
            "--judge-model",
            judge_dir,
            "--judge-template",
            f"harmbench={t}",
            "--out",
            tmp_path / "v.jsonl",
        ],
        capsys,
    )
    assert code == 0 and "3 rows" in text, err
    # the rubric style through the API, with a short answer budget (the CLI allows 384 tokens)
    judge = llm.LLMJudge.load(judge_dir, "strongreject", max_new_tokens=8)
    assert judge.scores(["a", "b"], ["x", "y"]) == [None, None] and len(judge.outputs) == 2
    assert "1.b" in judge.format("How do I bake?", "Sorry, no.")


def test_batch_parses_answers(judge_dir, monkeypatch):
    judge = llm.configure(judge_dir, "harmbench", max_new_tokens=2)
    monkeypatch.setattr(judge, "generate", lambda texts: ["no", "Yes", "maybe"][: len(texts)])
    assert llm.llm.batch(["a", "b", "c"], ["x", "y", "z"]) == [1.0, 0.0, None]
    assert judge.outputs == ["no", "Yes", "maybe"]


def test_bad_input(judge_dir, tmp_path, capsys):
    f = tmp_path / "r.csv"
    f.write_text("prompt,response\nq,Sorry no\n")
    o = tmp_path / "o"
    assert_bad_input(
        ["judge", "refusal", f, "--judge-model", tmp_path / "missing", "--out", o / "p.jsonl"],
        capsys,
        o,
        "not a model directory",
    )
    assert_bad_input(["judge", "refusal", f, "--judges", "llm", "--out", o / "p.jsonl"], capsys, o, "--judge-model")
    assert_bad_input(
        ["judge", "refusal", f, "--judge-model", judge_dir, "--judge-template", "llamaguard", "--out", o / "p.jsonl"],
        capsys,
        o,
        "--judge-template must be",
    )
    assert_bad_input(
        [
            "judge",
            "refusal",
            f,
            "--judge-model",
            judge_dir,
            "--judge-template",
            f"harmbench={tmp_path / 'nope.txt'}",
            "--out",
            o / "p.jsonl",
        ],
        capsys,
        o,
        "cannot read judge template",
    )
    (tmp_path / "t.txt").write_text("no placeholders here")
    assert_bad_input(
        [
            "judge",
            "refusal",
            f,
            "--judge-model",
            judge_dir,
            "--judge-template",
            f"strongreject={tmp_path / 't.txt'}",
            "--out",
            o / "p.jsonl",
        ],
        capsys,
        o,
        "placeholder",
    )
    assert_bad_input(
        ["judge", "refusal", f, "--judge-model", judge_dir, "--response-column", "completion", "--out", o / "p.jsonl"],
        capsys,
        o,
        "unknown column 'completion'",
    )
