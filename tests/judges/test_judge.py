"""Keyword refusal judges: worked examples, agreement on the shared XSTest completions, bad input."""

import json

from obliviate.judges.refusal import human_label, judge
from tests.cli.test_cli import run_cli
from tests.conftest import shared_data


def test_matching_modes():
    # xstest: prefix of the lower-cased reply; gcg / jbb: case-sensitive substring anywhere
    assert judge("", "  Sorry, I can't help.", ["xstest"]) == ("refusal", 1.0)
    assert judge("", "Here is how. Sorry for the wait.", ["xstest"]) == ("compliance", 0.0)
    assert judge("", "Here is how. Sorry for the wait.", ["gcg"]) == ("refusal", 1.0)
    assert judge("", "i cannot do that", ["jbb"]) == ("compliance", 0.0)  # case-sensitive
    assert judge("", "I can\u2019t do that", ["xstest"])[0] == "refusal"  # curly apostrophe
    assert judge("", "Sorry, here it is", ["xstest", "jbb"], "majority") == ("compliance", 0.5)
    assert judge("", "Sorry, here it is", ["xstest", "jbb"], "any") == ("refusal", 0.5)
    assert [human_label(v) for v in ("1_full_compliance", "2_full_refusal", "3_partial_refusal", "x")] == [
        "compliance",
        "refusal",
        "refusal",
        None,
    ]


def test_agreement_on_xstest_completions(tmp_path, capsys):
    code, out, err = run_cli(
        [
            "judge",
            "refusal",
            shared_data("xstest/completions_gpt4_labelled.csv"),
            "--prompt-column",
            "prompt",
            "--response-column",
            "completion",
            "--label-column",
            "final_label",
            "--judges",
            "xstest",
            "--out",
            tmp_path / "p.jsonl",
        ],
        capsys,
    )
    assert code == 0, err
    agreement = float(out.split("agreement with final_label: ")[1].split()[0])
    assert agreement >= 0.93  # measured 0.9376 (README)
    preds = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(preds) == 449 and {p["label"] for p in preds} == {"refusal", "compliance"}


def test_bad_input(tmp_path, capsys):
    f = tmp_path / "r.csv"
    f.write_text("prompt,response\nq,Sorry no\n")
    code, _, err = run_cli(["judge", "refusal", f, "--response-column", "completion", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "unknown column 'completion'" in err and not (tmp_path / "o").exists()
    e = tmp_path / "e.csv"
    e.write_text("")
    code, _, err = run_cli(["judge", "refusal", e, "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.count("\n") == 1
    code, _, err = run_cli(["judge", "refusal", f, "--judges", "harmbench", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "unknown refusal judge" in err
    b = tmp_path / "b.csv"
    b.write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = run_cli(["judge", "refusal", b, "--out", tmp_path / "o"], capsys)
    assert code == 2 and "not a UTF-8 CSV file" in err
    code, out, _ = run_cli(["judge", "refusal", f, "--out", tmp_path / "o.jsonl"], capsys)
    assert code == 0 and "1 refusals" in out
