"""The HTML report leads with each wing's headline figures: one table per wing (unlearning: forget quality and model
utility; refusal: refusal, over-refusal, refusal at depth), before provenance and before any figure; a refusal run
never sits under unlearning columns; results.json's "intervals" appear in the cells and as error bars."""

from __future__ import annotations

import json
import random
import re
from html import unescape
from pathlib import Path

import pytest

from tests.cli.test_cli import run_cli
from tests.report.test_report_html import _unlearning_dir

REFUSAL = {  # the real demo's refusal half: public prompt sets, prefill depths 5, 10, 20
    "base": {"refusal_rate": 0.5, "over_refusal_rate": 0.05, "refusal_rate@prefill5": 0.3},
    "derta": {"refusal_rate": 0.875, "over_refusal_rate": 0.225, "refusal_rate@prefill5": 0.8},
}


def refusal_metrics(m: dict) -> dict:
    return {
        **m,
        "refusal_rate@prefill20": m["refusal_rate@prefill5"] / 2,
        "refusal_rate@prefill10": m["refusal_rate@prefill5"] * 0.75,
        "refusal_position_mean": 1.5,
        "refusal_rate[harmbench]": m["refusal_rate"],
    }


def interval(value: float, n: int, half: float = 0.1) -> dict:
    """The shape `obliviate.metrics.intervals.rate_interval` returns."""
    return {
        "value": value,
        "n": n,
        "samples": 1,
        "lo": max(0.0, value - half),
        "hi": min(1.0, value + half),
        "level": 0.95,
        "method": "percentile",
    }


def _refusal_dir(root: Path, intervals: dict | None, name: str = "refusal-eval") -> Path:
    from obliviate.runs.results import results_document

    d = root / name
    d.mkdir()
    results = {run: refusal_metrics(m) for run, m in REFUSAL.items()}
    extra = {"intervals": intervals} if intervals is not None else {}
    (d / "results.json").write_text(json.dumps(results_document({"suite": "public"}, results, {}, extra)))
    return d


def _tables(page: str) -> list[tuple[str, list[str], dict[str, list[str]]]]:
    """(wing, column names, {run: cell texts}) of each results table, in page order."""
    out = []
    for wing, body in re.findall(r'<table class="num results" data-wing="(\w+)">(.*?)</table>', page, re.S):
        head = re.search(r"<thead>(.*?)</thead>", body, re.S).group(1)
        cols = [unescape(re.sub(r"<.*?>|[↑↓◎]", "", c)).strip() for c in re.findall(r"<th.*?</th>", head)][1:]
        rows = {}
        for tr in re.findall(r"<tr><th>(.*?)</tr>", re.search(r"<tbody>(.*)</tbody>", body, re.S).group(1)):
            run, _, cells = tr.partition("</th>")
            rows[run] = [unescape(re.sub(r"<.*?>", "", c)) for c in re.findall(r"<td.*?</td>", cells)]
        out.append((wing, cols, rows))
    return out


def test_headline_tables_lead_each_wing(tmp_path):
    from obliviate.report.html import write_report

    unl = _unlearning_dir(tmp_path, random.Random(0))
    ref = _refusal_dir(tmp_path, None)
    out = tmp_path / "r.html"
    write_report([unl, ref], out)
    page = out.read_text()
    tables = _tables(page)
    assert [w for w, _, _ in tables] == ["unlearning", "refusal"]
    (_, ucols, urows), (_, rcols, rrows) = tables
    assert ucols[:2] == ["forget_quality", "model_utility"] and "forget_value_acc" in ucols[2:]
    assert rcols[:5] == [
        "refusal_rate",
        "over_refusal_rate",
        "refusal_rate@prefill5",
        "refusal_rate@prefill10",
        "refusal_rate@prefill20",
    ]
    assert not {"forget_quality", "model_utility"} & set(rcols) and list(rrows) == ["base", "derta"]
    assert rrows["derta"][:3] == ["0.875", "0.225", "0.800"]
    # the tables come before each directory's provenance, and every figure after all of them
    assert page.index('data-wing="refusal"') < page.index("<table class=kv>", page.index("<h3>refusal-eval</h3>"))
    assert page.index('data-wing="unlearning"') < page.index("<table class=kv>")
    assert page.index('data-wing="refusal"') < page.index('data-figure="pareto"')
    # the figures: each wing's headline first, memorisation (ROC, truth ratios) after them
    figs = re.findall(r'data-figure="([^"]+)"', page)
    assert figs.index("refusal") < figs.index("depth") < figs.index("roc-0") < figs.index("truth-0")
    assert figs.index("pareto") < figs.index("roc-0")
    assert "[" not in "".join(rrows["derta"]) and "Error bars" not in page  # no intervals: none shown


def test_one_file_of_both_wings_has_no_row_of_dashes(tmp_path):
    """The real demo: unlearning runs and refusal runs in one results.json."""
    from obliviate.report.html import write_report
    from obliviate.runs.results import results_document

    d = tmp_path / "demo-real"
    d.mkdir()
    results = {
        "target": {"forget_value_acc": 0.9, "forget_quality": 1e-6, "model_utility": 0.5},
        "npo": {"forget_value_acc": 0.1, "forget_quality": 0.2, "model_utility": 0.45, "relearn_recovered": 0.1},
    } | {run: refusal_metrics(m) for run, m in REFUSAL.items()}
    (d / "results.json").write_text(json.dumps(results_document({"suite": "real"}, results, {})))
    write_report([d], tmp_path / "r.html")
    tables = {w: (cols, rows) for w, cols, rows in _tables((tmp_path / "r.html").read_text())}
    assert list(tables["unlearning"][1]) == ["target", "npo"] and list(tables["refusal"][1]) == ["base", "derta"]
    assert tables["unlearning"][0][:2] == ["forget_quality", "model_utility"]
    for cols, rows in tables.values():
        for run, cells in rows.items():
            assert "–" not in cells[:2], (run, cols, cells)  # the first visible columns are the run's own figures
    assert all("–" not in cells for cells in tables["refusal"][1].values())


def test_worst_of_n_beside_each_rate(tmp_path):
    from obliviate.report.html import write_report

    d = _refusal_dir(tmp_path, None)
    doc = json.loads((d / "results.json").read_text())
    for m in doc["results"].values():  # `refusal-eval --samples 5`
        m |= {"refusal_rate@prefill5@all5": 0.1, "over_refusal_rate@any5": 0.4, "refusal_rate@all5": 0.3}
    (d / "results.json").write_text(json.dumps(doc))
    write_report([d], tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    [(_, cols, _)] = _tables(page)
    assert cols[:4] == ["refusal_rate", "refusal_rate@all5", "over_refusal_rate", "over_refusal_rate@any5"]
    assert cols[4:7] == ["refusal_rate@prefill5", "refusal_rate@prefill10", "refusal_rate@prefill20"]
    assert "refusal_rate@all5 ↑" in page and "over_refusal_rate@any5 ↓" in page


@pytest.mark.parametrize("flat", [False, True])
def test_intervals_in_cells_and_error_bars(tmp_path, flat):
    from obliviate.report.html import write_report

    n = lambda k: 40 if k == "over_refusal_rate" else 80
    per_run = {
        run: {k: interval(v, n(k)) for k, v in refusal_metrics(m).items() if k != "refusal_position_mean"}
        for run, m in REFUSAL.items()
    }
    per_run["derta"]["refusal_rate@prefill10"] = {"lo": "x", "hi": 1}  # malformed: left out, not an error
    if flat:  # {metric: interval}: a file of one run
        per_run = per_run["derta"]
        d = _refusal_dir(tmp_path, per_run)
        doc = json.loads((d / "results.json").read_text())
        doc["results"] = {"derta": doc["results"]["derta"]}
        (d / "results.json").write_text(json.dumps(doc))
    else:
        d = _refusal_dir(tmp_path, per_run)
    write_report([d], tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    [(_, cols, rows)] = _tables(page)
    cells = dict(zip(cols, rows["derta"]))
    assert cells["refusal_rate"] == "0.875 [0.775, 0.975] n=80"
    assert cells["over_refusal_rate"] == "0.225 [0.125, 0.325] n=40"
    assert cells["refusal_rate@prefill10"] == "0.600" and cells["refusal_position_mean"] == "1.500"
    assert "95% interval, n = 80 prompts; percentile" in page and "[lo, hi] is the 95% interval" in page
    # error bars: one set per axis on the scatter (x and y), one per depth with an interval on the depth curves
    svg = lambda fig: re.search(rf'data-figure="{fig}">(.*?)</figure>', page, re.S).group(1)
    runs = 1 if flat else 2
    assert len(re.findall(r'id="LineCollection_\d+"', svg("refusal"))) == 2 * runs
    assert len(re.findall(r'id="LineCollection_\d+"', svg("depth"))) == 4 * runs - 1  # k = 0, 5, 10, 20; one bad
    assert page.count("Error bars: 95% intervals over prompts") == 2


def test_intervals_that_are_not_an_object_exit_2(tmp_path, capsys):
    d = _refusal_dir(tmp_path, None)
    doc = json.loads((d / "results.json").read_text()) | {"intervals": [1, 2]}
    (d / "results.json").write_text(json.dumps(doc))
    code, _, err = run_cli(["report", d, "--out", tmp_path / "r.html"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "'intervals' must be an object" in lines[0], err
    assert not (tmp_path / "r.html").exists()
