import json

import pytest
import torch

from obliviate.benchmarks.wmdp import choice_scores, letter_prompt, load_mc, mc_accuracy
from obliviate.core.errors import UsageError
from obliviate.models.load import load_model
from tests.cli.test_cli import run_cli

ROWS = [
    {"question": "What is the capital of Arvandia?", "choices": ["Keldmar", "Ostwyn", "Crask", "Grisk"], "answer": 0},
    {"question": "Which river flows through Belmorra?", "choices": ["the Ossel", "the Varn"], "answer": 1},
]


def test_load_mc_validates(tmp_path):
    good = tmp_path / "mc.json"
    good.write_text(json.dumps(ROWS))
    assert load_mc(good) == ROWS
    jl = tmp_path / "mc.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert load_mc(jl) == ROWS
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q", "choices": ["a"], "answer": 3}]))
    with pytest.raises(UsageError, match="item 0: needs question"):
        load_mc(bad)


def test_letter_prompt():
    assert letter_prompt(ROWS[1]) == "Which river flows through Belmorra?\nA. the Ossel\nB. the Varn\nAnswer:"


def _direct(model, tok, prompt: str, cont: str) -> float:
    """log p(cont | prompt): one unpadded forward pass, log-softmax, summed over the continuation's tokens."""
    p = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p + c])).logits[0, :-1].float(), -1)
    return sum(logp[len(p) - 1 + i, t].item() for i, t in enumerate(c))


def test_choice_scores_match_a_direct_computation(target_dir):
    """Every choice's score in both modes, against single unpadded passes (the batch pads the shorter choices)."""
    model, tok = load_model(str(target_dir))
    row = {
        "question": "What is the capital of Arvandia?",
        "choices": ["Keldmar", "the Ossel", "Crask and Grisk"],
        "answer": 0,
    }
    letter = "What is the capital of Arvandia?\nA. Keldmar\nB. the Ossel\nC. Crask and Grisk\nAnswer:"
    conts = {"text": [" Keldmar", " the Ossel", " Crask and Grisk"], "letter": [" A", " B", " C"]}
    prompts = {"text": "What is the capital of Arvandia?", "letter": letter}
    lengths = {len(tok(c, add_special_tokens=False)["input_ids"]) for c in conts["text"]}
    assert len(lengths) == 3  # choices of different lengths: the batch pads
    for mode in ("text", "letter"):
        want = [_direct(model, tok, prompts[mode], c) for c in conts[mode]]
        assert choice_scores(model, tok, row, mode) == pytest.approx(want, abs=1e-4)


def test_mc_accuracy_is_the_share_of_rows_whose_answer_scores_highest(target_dir):
    """Two rows whose answers are set from the direct scores: the best-scored choice (a hit) and the worst (a miss):
    accuracy 1/2, in each mode."""
    model, tok = load_model(str(target_dir))
    for mode in ("text", "letter"):
        rows = []
        for row, pick in zip(ROWS, (max, min)):
            if mode == "text":
                scores = [_direct(model, tok, row["question"], " " + c) for c in row["choices"]]
            else:
                scores = [_direct(model, tok, letter_prompt(row), f" {'ABCD'[i]}") for i in range(len(row["choices"]))]
            assert len(set(scores)) == len(scores)  # no ties
            rows.append(dict(row, answer=scores.index(pick(scores))))
        assert mc_accuracy(model, tok, rows, mode) == 0.5
        assert mc_accuracy(model, tok, rows[:1], mode) == 1.0 and mc_accuracy(model, tok, rows[1:], mode) == 0.0


def test_wmdp_cli(target_dir, tmp_path, capsys):
    f = tmp_path / "mc.json"
    f.write_text(json.dumps(ROWS))
    code, out, err = run_cli(["wmdp", "--model", target_dir, "--data", f], capsys)
    assert code == 0 and out.startswith("accuracy"), err
    code, _, err = run_cli(["wmdp", "--model", target_dir, "--data", f, "--mode", "both"], capsys)
    assert code == 2 and "unknown --mode" in err
