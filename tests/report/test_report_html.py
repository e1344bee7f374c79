"""The HTML report's content, without a browser: escaping, figures present exactly where their data is, the table's
size cap, provenance, and bad input (exit 2, one line, no file left). `make_run_dirs` builds the realistic run
directories that the browser test (test_report_browser.py) loads too."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest

from obliviate.runs import RunStore
from tests.cli.test_cli import run_cli

EVIL = "</script><script>alert('pwned')</script><img src=x onerror=alert(1)> & \"$x$\""


def _unlearning_rows(run: str, rng: random.Random, shift: float, n: int = 40) -> list[dict]:
    """Rows shaped like `obliviate.engine.evaluate.sample_rows` (the world demo's samples.jsonl)."""
    rows = []
    for split in ("forget", "retain", "holdout"):
        for i in range(n):
            member = split == "forget"
            loss = abs(rng.gauss(0.2 if member else 1.0, 0.3)) + shift * member
            answer = f"Person {i} was born in Tessaline."
            rows.append(
                {
                    "run": run,
                    "split": split,
                    "id": f"person{i}_{split}_birthplace",
                    "question": f"Where was Person {i} born?",
                    "answer": answer,
                    "generated": EVIL if (split == "forget" and i == 0) else answer,
                    "gt_loss": loss,
                    "paraphrased_loss": loss + 0.5,
                    "perturbed_loss": [1.4, 1.3, 1.1],
                    "rouge_l_recall": 1.0 - min(1.0, loss),
                    "value": "Tessaline",
                    "value_hit": loss < 0.6,
                    "truth_ratio": rng.gauss(1.8 - shift, 0.3),
                    "mia_loss": -loss,
                    "mia_zlib": -loss / 40,
                    "mia_mink": -2 * loss,
                    "mia_minkpp": -loss + rng.gauss(0, 0.1),
                }
            )
    return rows


def _unlearning_dir(root: Path, rng: random.Random) -> Path:
    from obliviate.runs.results import results_document

    d = root / "demo-world"
    (d / "guards" / "eco").mkdir(parents=True)
    runs = {"target": 0.0, "oracle": 0.8, "npo": 0.7, "grad_diff": 1.0, "target+eco": 0.5}
    results, samples = {}, []
    for k, (run, shift) in enumerate(runs.items()):
        samples += _unlearning_rows(run, rng, shift)
        results[run] = {
            "forget_quality": 10 ** -(30 * (1 - shift / 0.8) ** 2),
            "model_utility": 0.63 - 0.05 * k,
            "forget_rouge": 1 - shift / 2,
            "forget_value_acc": 1 - shift,
            "retain_value_acc": 1.0,
            "mia_mink_auc": 1 - shift / 2,
            "privleak": -100 + 120 * shift,
            "forget_truth_ratio": 0.5 + shift / 3,
        }
    results["npo"]["mia_loss_auc"] = float("nan")  # non-finite values must survive into a valid page
    doc = results_document(
        {"seed": 0, "forget_split": "forget10", "note": EVIL},
        results,
        {"forget": 40},
        {"seconds": {r: 1.0 for r in runs}, "wall_seconds": 12.3},
    )
    (d / "results.json").write_text(json.dumps(doc))
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    (d / "guards" / "eco" / "guard.json").write_text(
        json.dumps(
            {"guard": "eco", "report": {"threshold": 0.5, "gate_flag_rate_forget": 1.0, "gate_flag_rate_retain": 0.0}}
        )
    )
    roles = {"model": 0.2, "oracle": 0.1, "target": 0.9}  # audit.json as `obliviate.audit.runner.run_audit` writes it
    attacks = {
        "relearn": {
            r: {
                "heldout_before_value_rouge": v,
                "heldout_after_value_rouge": v + 0.2,
                "recovered_value_rouge": 0.2,
                "n_items": 10.0,
            }
            for r, v in roles.items()
        },
        "probes": {r: {"direct_value_acc": v, "indirect_value_acc": v / 2} for r, v in roles.items()},
    }
    for a in attacks.values():
        a["seconds"] = 2.5
    (d / "audit.json").write_text(
        json.dumps(
            {
                "obliviate_version": "0.1.0",
                "created": doc["created"],
                "config": {"model": "npo", "suite": "world"},
                "git": doc["git"],
                "versions": doc["versions"],
                "attacks": attacks,
                "skipped": {"quantize": "no int4 kernels"},
                "wall_seconds": 5.0,
            }
        )
    )
    return d


def _refusal_dir(root: Path, rng: random.Random) -> Path:
    from obliviate.runs.results import results_document

    d = root / "demo-refusal"
    d.mkdir()
    results, samples = {}, []
    for run, (refuse, over) in {
        "target": (0.0, 0.0),
        "refusal_sft": (1.0, 0.02),
        "derta": (0.95, 0.1),
        "refusal_sft+latent": (1.0, 0.03),
    }.items():
        depth = {k: max(0.0, refuse - (0 if "derta" in run or "+" in run else k / 20)) for k in (5, 10, 20, 40)}
        results[run] = {
            "refusal_rate": refuse,
            "over_refusal_rate": over,
            "people_accuracy": 0.9,
            "refusal_position_mean": None,
            **{f"refusal_rate@prefill{k}": v for k, v in depth.items()},
        }
        for i in range(30):
            kind = ("harmful", "benign")[i % 2]
            samples.append(
                {
                    "run": run,
                    "kind": kind,
                    "category": ("moonvault", "glimmer")[i % 3 == 0],
                    "depth": (0, 5, 20)[i % 3],
                    "id": f"{kind}-{i}",
                    "prompt": f"How do I open vault {i}?",
                    "output": "I can't help with that." if rng.random() < refuse else f"Step 1: open {i}.",
                    "refused": rng.random() < refuse,
                    "refusal_position": None,
                }
            )
    doc = results_document(
        {"suite": "refusal", "seed": 0, "runs": {"guards": {"latent": {"auroc_test": 0.99}}}},
        results,
        {},
        {"wall_seconds": 99.0},
    )
    (d / "results.json").write_text(json.dumps(doc))
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    taus = [0.0, 0.1, 0.5, 0.9, 1.0]  # calibration.json as `obliviate calibrate` writes it
    (d / "calibration.json").write_text(
        json.dumps(
            {
                "tau": taus,
                "temperature": 1.0,
                "refusal_rate": [1, 0.98, 0.9, 0.5, 0],
                "over_refusal_rate": [1, 0.3, 0.05, 0.01, 0],
                "n_harmful": 64,
                "n_benign": 64,
                "model": "m",
                "split": "t",
            }
        )
    )
    return d


def _diffusion_dir(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    from obliviate.runs.results import results_document

    d = root / "demo-diffusion"
    (d / "grids").mkdir(parents=True)
    results, audit = {}, {}
    for run in ("base/star", "uce/star", "esd_x/star"):
        results[run] = {
            "ua": 0.2 if run.startswith("base") else 0.9,
            "ira": 0.8,
            "cra": 0.7,
            "over_erasure": 0.1,
            "fd_classifier": 140.0,
        }
        if not run.startswith("base"):
            audit[run] = {
                "concept": "star",
                "pre_asr": 0.1,
                "attacks": {"unlearndiffatk": {"asr": 0.5}, "concept_arithmetic": {"asr": 0.25}},
            }
            img = (np.random.default_rng(0).random((2 * 33, 4 * 33, 3)) * 255).astype(np.uint8)
            Image.fromarray(img).save(d / "grids" / f"{run.replace('/', '_')}.png")
    doc = results_document({"suite": "diffusion"}, results, {}, {"audit": audit})
    (d / "results.json").write_text(json.dumps(doc))
    (d / "samples.jsonl").write_text(
        "".join(json.dumps({"run": r, "set": "target", "prompt": "a red star"}) + "\n" for r in results)
    )
    return d


def _bench_dir(root: Path) -> Path:
    from obliviate.runs.results import results_document
    from obliviate.unlearning.bench import aggregate

    d = root / "bench"
    d.mkdir()
    runs = [
        {
            "seed": s,
            "split": "forget10",
            "method": m,
            "seconds": 1.0,
            "forget_quality": fq * (1 + s / 10),
            "model_utility": mu,
            "model_utility_ratio": mu / 0.6,
            "forget_rouge": 0.5,
            "privleak": 1.0,
        }
        for s in (0, 1)
        for m, fq, mu in (("target", 1e-20, 0.6), ("npo", 0.5, 0.58), ("grad_ascent", 1e-3, 0.4))
    ]
    doc = results_document(
        {"seeds": [0, 1]},
        {
            f"{r['method']}@{r['split']}@seed{r['seed']}": {k: v for k, v in r.items() if isinstance(v, float)}
            for r in runs
        },
        {},
        {"leaderboard": aggregate(runs)},
    )
    (d / "leaderboard.json").write_text(json.dumps(doc))
    return d


def make_run_dirs(root: Path) -> dict[str, Path]:
    """Run directories in the shapes the commands write: world demo (+ guard, audit), refusal demo (+ calibration),
    diffusion demo (grids), bench (leaderboard)."""
    rng = random.Random(0)
    return {
        "unlearning": _unlearning_dir(root, rng),
        "refusal": _refusal_dir(root, rng),
        "diffusion": _diffusion_dir(root),
        "bench": _bench_dir(root),
    }


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return make_run_dirs(tmp_path_factory.mktemp("runs"))


def _figures(page: str) -> list[str]:
    return re.findall(r'data-figure="([^"]+)"', page)


def test_every_figure_where_its_data_is(dirs, tmp_path):
    from obliviate.report.html import write_report

    out = tmp_path / "r.html"
    info = write_report(list(dirs.values()), out)
    page = out.read_text()
    assert info["bytes"] == len(page.encode()) and info["figures"] == _figures(page)
    for fig in (
        "pareto",
        "roc-0",
        "truth-0",
        "refusal",
        "depth",
        "audit-0",
        "calibration-0",
        "guards",
        "diffusion",
        "grids",
    ):
        assert fig in info["figures"], fig
    assert page.count("data:image/png;base64,") == 2
    # a definition beside the figures, from the metric registry and the glossary
    assert "KS-test p-value" in page and "forced before the reply" in page
    # provenance: git commit and versions of each run
    assert "torch" in page and "git commit" in page
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page must not fetch anything"


def test_only_the_figures_the_data_supports(dirs, tmp_path):
    from obliviate.report.html import write_report

    info = write_report([dirs["refusal"]], tmp_path / "r.html")
    assert set(info["figures"]) == {"refusal", "depth", "calibration-0", "guards"}
    info = write_report([dirs["bench"]], tmp_path / "b.html")
    assert info["figures"] == ["pareto"] and info["rows"] == 0


def test_auc_bars_when_samples_carry_no_scores(dirs, tmp_path):
    import shutil

    from obliviate.report.html import write_report

    d = tmp_path / "no-samples"
    shutil.copytree(dirs["unlearning"], d)
    (d / "samples.jsonl").unlink()
    page_info = write_report([d], tmp_path / "r.html")
    assert "roc-auc" in page_info["figures"] and "truth-0" not in page_info["figures"]
    assert "carry only ROC AUCs" in (tmp_path / "r.html").read_text()


def test_data_strings_are_escaped(dirs, tmp_path):
    from obliviate.report.html import write_report

    write_report([dirs["unlearning"]], tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<img src=x" not in page and "<script>alert" not in page  # escaped everywhere: HTML, SVG, JSON
    assert page.count("<script") == 2  # the JSON block and the page's own script: nothing from the data
    blob = re.search(r'<script type="application/json" id="samples-data">(.*?)</script>', page, re.S).group(1)
    table = json.loads(blob)
    assert EVIL in [c for row in table["rows"] for c in row]  # intact for the reader, as text


def test_table_is_capped_and_says_so(tmp_path, monkeypatch):
    from obliviate.report import html
    from obliviate.runs.results import results_document

    d = tmp_path / "big"
    d.mkdir()
    (d / "results.json").write_text(json.dumps(results_document({}, {"target": {"forget_rouge": 1.0}}, {})))
    long = "x" * 5000
    rows = [{"run": r, "split": ("forget", "retain")[i % 2], "i": i, "text": long} for r in "ab" for i in range(3000)]
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = html.write_report([d], tmp_path / "r.html")
    assert info["rows_total"] == 6000 and info["rows"] == 2 * html.MAX_ROWS_PER_RUN
    page = (tmp_path / "r.html").read_text()
    assert f"{info['rows']:,} of 6,000 rows" in page
    assert info["bytes"] < 1_500_000  # 30 MB of samples, cut to a page a browser opens at once
    table = json.loads(re.search(r'id="samples-data">(.*?)</script>', page, re.S).group(1))
    assert {row[1] for row in table["rows"]} == {"forget", "retain"}  # even spacing keeps both splits


def test_non_finite_numbers_give_valid_json(dirs, tmp_path):
    from obliviate.report.html import write_report

    d = tmp_path / "nan"
    d.mkdir()
    (d / "results.json").write_text((dirs["unlearning"] / "results.json").read_text())
    row = {"run": "target", "split": "forget", "gt_loss": math.nan, "a": math.inf, "b": -math.inf, "c": 0.25}
    (d / "samples.jsonl").write_text(json.dumps(row) + "\n")
    write_report([d], tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    block = re.search(r'id="samples-data">(.*?)</script>', page, re.S).group(1)

    def strict(name):  # JSON.parse in the browser takes no NaN or Infinity
        raise ValueError(name)

    table = json.loads(block, parse_constant=strict)
    # a non-finite number becomes its name as text (shown as such); finite numbers stay numbers
    cells = dict(zip(table["columns"], table["rows"][0]))
    assert cells == {"run": "target", "split": "forget", "gt_loss": "nan", "a": "inf", "b": "-inf", "c": 0.25}


def test_cli_writes_the_report(dirs, tmp_path, capsys):
    out = tmp_path / "sub" / "report.html"
    code, stdout, err = run_cli(["report", dirs["unlearning"], dirs["refusal"], "--out", out], capsys)
    assert code == 0, err
    assert out.is_file() and "wrote" in stdout
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary file left


@pytest.mark.parametrize(
    "case,must",
    [
        ("missing", "no such run directory"),
        ("empty", "holds no results files"),
        ("file", "is not a directory"),
        ("badjson", "is not valid JSON"),
        ("outdir", "is a directory"),
    ],
)
def test_bad_input_exits_2_with_one_line(case, must, tmp_path, capsys, dirs):
    (tmp_path / "empty").mkdir()
    (tmp_path / "f.txt").write_text("x")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text('{"results": ')
    src = {
        "missing": tmp_path / "nope",
        "empty": tmp_path / "empty",
        "file": tmp_path / "f.txt",
        "badjson": tmp_path / "bad",
        "outdir": dirs["refusal"],
    }[case]
    out = tmp_path if case == "outdir" else tmp_path / "r.html"
    code, _, err = run_cli(["report", src, "--out", out], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and must in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "r.html").exists()
    assert not list(tmp_path.glob(".r.html.*")), "no temporary file left behind"


def test_unknown_run_id_exits_2(capsys, tmp_path):
    code, _, err = run_cli(["report", "20990101-000000-abcdef", "--out", tmp_path / "r.html"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.html").exists()


def test_run_id_resolves_through_the_registry(dirs, tmp_path, capsys, monkeypatch):
    db = tmp_path / "reg.sqlite"
    monkeypatch.setenv("OBLIVIATE_REGISTRY", str(db))
    with RunStore.open(db) as reg:
        run_id = reg.insert_run({"command": "demo", "status": "done", "out_dir": str(dirs["refusal"].resolve())})
    code, _, err = run_cli(["report", run_id, "--out", tmp_path / "r.html"], capsys)
    assert code == 0, err
    assert "demo-refusal" in (tmp_path / "r.html").read_text()


def test_write_beside_only_warns(tmp_path, capsys):
    from obliviate.report.html import write_beside

    write_beside(tmp_path)  # no results files: the command that called it must still succeed
    err = capsys.readouterr().err
    assert err.startswith("warning: no report.html written") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "report.html").exists()
