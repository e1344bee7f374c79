"""The TOFU suite: files shaped like locuslab/TOFU's data/ (TOFU's own real_authors and world_facts files from
../shared/data)."""

import json
import shutil

import pytest

from obliviate.benchmarks.layouts import SUITES
from obliviate.runs.schema import validate_results
from tests.cli.test_cli import run_cli
from tests.conftest import shared_data


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def tofu_dir(world_dir, tmp_path_factory):
    """TOFU's file names and JSONL-in-.json format; forget/retain rows from the world (TOFU's are not shared)."""
    d = tmp_path_factory.mktemp("tofu")
    rows = lambda name: [json.loads(x) for x in (world_dir / f"{name}.jsonl").read_text().splitlines()]
    strip = lambda r: {k: r[k] for k in ("question", "answer")}
    _jsonl(d / "forget10.json", [strip(r) for r in rows("forget10")])
    _jsonl(d / "retain90.json", [strip(r) for r in rows("retain90")])
    _jsonl(d / "forget10_perturbed.json", rows("forget10"))
    _jsonl(d / "retain_perturbed.json", rows("retain_eval"))
    for name in ("real_authors_perturbed.json", "world_facts_perturbed.json"):
        shutil.copy(shared_data(f"tofu/{name}"), d / name)
    return d


def test_tofu_suite_reads_tofu_files(tofu_dir):
    data = SUITES.get("tofu").eval_data(tofu_dir, "forget10")
    assert set(data) == {"forget", "retain", "real_authors", "world_facts"}  # holdout is optional
    assert all(it.paraphrased_answer == it.answer for it in data["world_facts"])


def test_unlearn_and_eval_with_tofu_suite(tofu_dir, target_dir, tmp_path, capsys):
    code, _, err = run_cli(
        [
            "unlearn",
            "--suite",
            "tofu",
            "--data",
            tofu_dir,
            "--model",
            target_dir,
            "--method",
            "npo",
            "--steps",
            2,
            "--out",
            tmp_path / "u",
        ],
        capsys,
    )
    assert code == 0, err
    code, _, err = run_cli(
        [
            "eval",
            "--suite",
            "tofu",
            "--data",
            tofu_dir,
            "--model",
            f"npo={tmp_path / 'u'}",
            "--oracle",
            target_dir,
            "--out",
            tmp_path / "e",
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads((tmp_path / "e" / "results.json").read_text())["results"]["npo"]
    assert {"real_authors_prob", "world_facts_truth_ratio", "model_utility", "forget_quality"} <= set(res)
    assert "mia_loss_auc" not in res  # no holdout file, so no MIA


def test_suite_arguments_are_checked(tofu_dir, target_dir, tmp_path, capsys):
    code, _, err = run_cli(
        ["unlearn", "--suite", "tofu", "--model", target_dir, "--method", "npo", "--out", tmp_path / "u"], capsys
    )
    assert code == 2 and "--suite and --data" in err
    code, _, err = run_cli(
        [
            "unlearn",
            "--suite",
            "tofoo",
            "--data",
            tofu_dir,
            "--model",
            target_dir,
            "--method",
            "npo",
            "--out",
            tmp_path / "u",
        ],
        capsys,
    )
    assert code == 2 and "did you mean 'tofu'" in err and not (tmp_path / "u").exists()


def test_rouge_l_f1_matches_rouge_score():
    from rouge_score import rouge_scorer

    from obliviate.benchmarks.muse import rouge_l_f1

    ref, pred = "It was founded in 1432 by Maud Carrow.", "founded in 1432 by Tobin"
    want = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(ref, pred)["rougeL"].fmeasure
    assert rouge_l_f1(ref, pred) == pytest.approx(want)
    # by hand: LCS = founded in 1432 by (4 tokens); P = 4/5, R = 4/8, F1 = 2PR/(P+R) = 0.6153846
    assert rouge_l_f1(ref, pred) == pytest.approx(0.6153846, abs=1e-6)


def test_passages_world_is_deterministic_and_split_right():
    from obliviate.data.passages import build_passages

    a, b = build_passages(0), build_passages(0)
    assert a == b and build_passages(1) != a
    ids = lambda k: [p["id"] for p in a[k]]
    assert ids("muse_scal4") == ids("muse_forget")
    assert sum((ids(f"muse_sust{k}") for k in range(1, 5)), []) == ids("muse_forget")
    assert all(set(ids(f"muse_scal{k}")) < set(ids(f"muse_scal{k + 1}")) for k in range(1, 4))
    assert not set(ids("muse_forget")) & set(ids("muse_retain")) and not set(ids("muse_holdout")) & set(
        ids("muse_retain")
    )


@pytest.mark.slow  # 46 s: `make test-slow` (make test stays under 12 minutes)
def test_muse_small(tmp_path, capsys):
    code, out, err = run_cli(
        ["muse", "--out", tmp_path / "m", "--methods", "grad_ascent,altpo", "--finetune-steps", 3], capsys
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "m" / "muse.json").read_text())
    assert validate_results(doc) == []
    r = doc["results"]["grad_ascent"]
    for key in ("verbmem_forget", "knowmem_forget", "privleak", "knowmem_retain"):
        assert key in r
    if doc["results"]["target"]["knowmem_retain"] > 0:  # ratios need a target that knows something
        assert "scalability" in r and "sustainability" in r
    assert len(doc["curves"]["grad_ascent"]["sustainability_curve"]) == 4
    assert "altpo" not in doc["results"]  # no alternate answers for passages: skipped, said in the log
    assert "C6 Sust" in out


@pytest.fixture(scope="module")
def muse_dir(tmp_path_factory):
    """A directory in MUSE's layout, from the world's passages (MUSE's own files are not shared)."""
    from obliviate.data.passages import build_passages

    d = tmp_path_factory.mktemp("muse")
    w = build_passages(0)
    for sub in ("raw", "verbmem", "knowmem", "privleak"):
        (d / sub).mkdir()
    _jsonl(d / "raw" / "forget.jsonl", [{"text": p["text"]} for p in w["muse_forget"]])
    (d / "raw" / "retain1.txt").write_text(" ".join(p["text"] for p in w["muse_retain"]))
    (d / "verbmem" / "forget.json").write_text(
        json.dumps([{"prompt": p["text"][:40], "gt": p["text"][40:]} for p in w["muse_forget"]])
    )
    _jsonl(d / "knowmem" / "forget_qa.jsonl", [x for p in w["muse_forget"] for x in p["qa"]])
    _jsonl(d / "knowmem" / "retain_qa.jsonl", [x for p in w["muse_retain"] for x in p["qa"]])
    _jsonl(d / "knowmem" / "retain_qa_icl.jsonl", w["muse_retain"][0]["qa"][:2])
    _jsonl(d / "privleak" / "forget.jsonl", [{"text": p["text"]} for p in w["muse_forget"]])
    _jsonl(d / "privleak" / "holdout.jsonl", [{"text": p["text"]} for p in w["muse_holdout"]])
    return d


def test_muse_eval_on_muse_layout(muse_dir, target_dir, capsys):
    from obliviate.benchmarks.muse_data import knowmem_prompt

    assert (
        knowmem_prompt("Q2?", [{"question": "Q1?", "answer": "A1"}])
        == "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer:"
    )
    code, out, err = run_cli(
        ["muse-eval", "--model", target_dir, "--data", muse_dir, "--oracle-auc", 0.5, "--limit", 5, "--json"], capsys
    )
    assert code == 0, err
    r = json.loads(out)
    assert set(r) == {"verbmem_forget", "knowmem_forget", "knowmem_retain", "mink_auc", "privleak"}
    assert all(0 <= r[k] <= 1 for k in ("verbmem_forget", "knowmem_forget", "knowmem_retain", "mink_auc"))


def test_muse_eval_missing_file(muse_dir, target_dir, tmp_path, capsys):
    shutil.copytree(muse_dir, tmp_path / "m")
    (tmp_path / "m" / "privleak" / "holdout.jsonl").unlink()
    code, _, err = run_cli(["muse-eval", "--model", target_dir, "--data", tmp_path / "m"], capsys)
    assert code == 2 and "MUSE file not found" in err and err.count("\n") == 1


def test_unlearn_muse_raw_text(muse_dir, target_dir, tmp_path, capsys):
    code, _, err = run_cli(
        [
            "unlearn",
            "--suite",
            "muse",
            "--data",
            muse_dir,
            "--model",
            target_dir,
            "--method",
            "npo",
            "--steps",
            2,
            "--out",
            tmp_path / "u",
        ],
        capsys,
    )
    assert code == 0, err
    log = json.loads((tmp_path / "u" / "train_log.json").read_text())
    assert len(log["history"]) == 2
    code, _, err = run_cli(
        ["eval", "--suite", "muse", "--data", muse_dir, "--model", target_dir, "--out", tmp_path / "e"], capsys
    )
    assert code == 2 and "muse-eval" in err and not (tmp_path / "e").exists()


def test_load_texts(tmp_path):
    from obliviate.core.errors import UsageError
    from obliviate.data.schema import load_texts

    (tmp_path / "a.txt").write_text("one document")
    assert load_texts(tmp_path / "a.txt") == ["one document"]
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n{"txt": "y"}\n')
    with pytest.raises(UsageError, match="b.jsonl:2"):
        load_texts(tmp_path / "b.jsonl")


def test_hub_dataset_id_offline_is_one_clear_line(target_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(
        [
            "unlearn",
            "--suite",
            "tofu",
            "--data",
            "locuslab/TOFU",
            "--model",
            target_dir,
            "--method",
            "npo",
            "--out",
            tmp_path / "u",
        ],
        capsys,
    )
    assert code == 2 and "could not be fetched" in err and err.count("\n") == 1 and not (tmp_path / "u").exists()
