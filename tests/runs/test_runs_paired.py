"""`obliviate runs compare A B`: paired tests on the prompts both runs were evaluated on, checked against p-values
computed by hand (and against scipy.stats directly), prompt matching, and the command's output."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import pytest
from scipy.stats import binomtest, wilcoxon

from obliviate.runs import RunStore
from obliviate.runs.paired import MCNEMAR, WILCOXON, compare_figure, outcomes, paired_tests
from tests.cli.test_cli import run_cli


def refusal_rows(run: str, refused: dict[str, list[bool] | bool], kind: str = "harmful", depth: int = 0) -> list[dict]:
    """samples.jsonl rows as `refusal_eval` writes them; a list of judgements gives one row per sample."""
    rows = []
    for pid, r in refused.items():
        for x in r if isinstance(r, list) else [r]:
            rows.append({"run": run, "id": pid, "kind": kind, "depth": depth, "prompt": f"prompt {pid}", "refused": x})
    return rows


def rates(refused: dict) -> dict:
    """The refusal_rate outcomes of one run's rows, per prompt."""
    return outcomes(refusal_rows("m", refused))["m"]["refusal_rate"]


def discordant(only_a: int, only_b: int, both: int = 20) -> tuple[dict, dict]:
    """Two runs' refusals on the same prompts: `only_a` refused by A alone, `only_b` by B alone, `both` by both."""
    a = {f"p{i}": i < only_a or i >= only_a + only_b for i in range(only_a + only_b + both)}
    b = {f"p{i}": i >= only_a for i in range(only_a + only_b + both)}
    return a, b


@pytest.mark.parametrize(
    "only_a,only_b,by_hand",
    [
        (10, 2, 2 * (comb(12, 0) + comb(12, 1) + comb(12, 2)) / 2**12),  # 158 / 4096 = 0.0386
        (5, 3, 2 * sum(comb(8, k) for k in range(4)) / 2**8),  # 186 / 256 = 0.727
        (0, 0, 1.0),  # no discordant pair: no evidence of a difference
    ],
)
def test_exact_mcnemar_by_hand(only_a, only_b, by_hand):
    a, b = discordant(only_a, only_b)
    res = compare_figure(rates(a), rates(b))
    assert res["test"] == MCNEMAR and res["discordant"] == [only_a, only_b] and res["n"] == len(a)
    assert res["p"] == pytest.approx(by_hand, abs=1e-12)
    if only_a + only_b:
        assert res["p"] == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue, abs=1e-12)
    assert res["verdict"] == ("beyond noise at 0.05" if by_hand < 0.05 else "within noise")
    assert res["a"] == pytest.approx(sum(a.values()) / len(a)) and res["b"] == pytest.approx(sum(b.values()) / len(b))


def test_wilcoxon_on_per_prompt_rates_by_hand():
    # N = 5 samples per prompt: A refuses 5 of 5 on six prompts, B 4, 3, 2, 1, 0 and 5 of them. The differences
    # 0.2 .. 1.0 are all positive and distinct (the zero is dropped): the exact two-sided p is 2 / 2^5
    a = {f"p{i}": [True] * 5 for i in range(6)}
    b = {f"p{i}": [True] * k + [False] * (5 - k) for i, k in enumerate((4, 3, 2, 1, 0, 5))}
    res = compare_figure(rates(a), rates(b))
    assert res["test"] == WILCOXON and res["samples_a"] == res["samples_b"] == 5 and res["nonzero"] == 5
    assert res["p"] == pytest.approx(2 / 2**5) and res["verdict"] == "within noise"
    assert res["a"] == 1.0 and res["b"] == pytest.approx(15 / 30)
    # a list of judgements in one row is the same as one row per sample
    listed = [
        {"run": "m", "id": k, "kind": "harmful", "depth": 0, "prompt": f"prompt {k}", "refused": v}
        for k, v in b.items()
    ]
    assert outcomes(listed) == outcomes(refusal_rows("m", b))
    # the worst case over the 5 replies: refused in all 5 by A on six prompts, by B on one: McNemar, 5 vs 0
    rows = paired_tests(refusal_rows("m", a), refusal_rows("m", b))["rows"]
    assert [r["figure"] for r in rows] == ["refusal_rate", "refusal_rate@all5"]
    assert rows[1]["test"] == MCNEMAR and rows[1]["discordant"] == [5, 0] and rows[1]["p"] == pytest.approx(2 / 2**5)
    # benign prompts: over-refused in any of the 5 replies
    rows = paired_tests(refusal_rows("m", b, kind="benign"), refusal_rows("m", a, kind="benign"))["rows"]
    assert rows[1]["figure"] == "over_refusal_rate@any5" and rows[1]["discordant"] == [0, 1]  # b's 0-of-5 prompt
    # other N in the two runs: the worst cases are different figures, and are not paired
    fewer = {k: v[:3] for k, v in b.items()}
    assert [r["figure"] for r in paired_tests(refusal_rows("m", a), refusal_rows("m", fewer))["rows"]] == [
        "refusal_rate"
    ]


def test_wilcoxon_with_ties_matches_scipy():
    rates_a = [1.0, 0.8, 0.8, 0.6, 1.0, 0.4, 0.2, 1.0, 0.6, 0.8, 1.0, 0.0]
    rates_b = [0.4, 0.2, 0.6, 0.6, 0.2, 0.0, 0.4, 0.6, 0.0, 0.2, 0.4, 0.0]
    to_samples = lambda r: [True] * round(5 * r) + [False] * (5 - round(5 * r))
    a = outcomes(refusal_rows("m", {f"p{i}": to_samples(r) for i, r in enumerate(rates_a)}))["m"]["refusal_rate"]
    b = outcomes(refusal_rows("m", {f"p{i}": to_samples(r) for i, r in enumerate(rates_b)}))["m"]["refusal_rate"]
    res = compare_figure(a, b)
    d = [x - y for x, y in zip(rates_a, rates_b) if abs(x - y) > 1e-9]
    assert res["p"] == pytest.approx(wilcoxon(d).pvalue, rel=1e-9) and res["p"] < 0.05
    assert res["verdict"] == "beyond noise at 0.05"


def test_matching_unmatched_and_different_prompts():
    a, b = discordant(10, 2)
    b.pop("p0"), b.pop("p13")  # B misses two prompts, and has one A never saw
    b["extra"] = True
    res = paired_tests(refusal_rows("x", a), refusal_rows("y", b))
    [row] = res["rows"]  # one sub-run in each file: they are paired, whatever their names
    assert (row["run_a"], row["run_b"], row["figure"]) == ("x", "y", "refusal_rate")
    assert (row["n"], row["only_a"], row["only_b"]) == (30, 2, 1) and row["discordant"] == [9, 2]
    assert row["p"] == pytest.approx(binomtest(9, 11, 0.5).pvalue)
    # the same ids with other prompt texts are other prompts: no test, and the note says so
    other = [r | {"prompt": "something else"} for r in refusal_rows("y", b)]
    res = paired_tests(refusal_rows("x", a), other)
    assert res["rows"][0]["test"] is None and res["rows"][0]["n"] == 0
    assert "different prompts" in res["note"] and "different prompts" in res["rows"][0]["verdict"]


def test_figures_of_each_wing_and_sub_run_pairing():
    rows = refusal_rows("base", {"h1": True}) + refusal_rows("base", {"b1": False}, kind="benign")
    rows += refusal_rows("base", {"h1": False}, depth=10)
    rows += [r | {"split": "heldout"} for r in refusal_rows("base", {"h2": True})]
    item = {"run": "target", "split": "forget", "id": "q1", "question": "q?", "value": "v", "value_hit": True}
    rows.append(item | {"rouge_l_recall": 0.5})
    rows.append({"run": "target", "kind": "people", "id": "x", "prompt": "p", "refused": None})  # not judged
    got = outcomes(rows)
    assert set(got["base"]) == {"refusal_rate", "over_refusal_rate", "refusal_rate@prefill10", "heldout_refusal_rate"}
    assert set(got["target"]) == {"forget_value_acc", "forget_rouge"}
    # several sub-runs: those of the same name meet; ID:RUN names them
    res = paired_tests(rows, rows)
    assert {(r["run_a"], r["run_b"]) for r in res["rows"]} == {("base", "base"), ("target", "target")}
    res = paired_tests(rows, refusal_rows("derta", {"h1": False}), sub_a="base")
    assert [(r["run_a"], r["run_b"], r["figure"]) for r in res["rows"]] == [("base", "derta", "refusal_rate")]


def test_unlearning_items_with_n_answers():
    def rows(hits):  # forget questions with 3 sampled answers each, as `score_split` writes them with --samples 3
        return [
            {"run": "npo", "split": "forget", "id": f"q{i}", "question": f"q{i}?", "value": "v", "value_hit": h}
            | {"rouge_l_recall": sum(h) / 3}
            for i, h in enumerate(hits)
        ]

    res = paired_tests(rows([[True, False, False]] * 8), rows([[False] * 3] * 8))["rows"]
    assert [r["figure"] for r in res] == ["forget_value_acc", "forget_value_acc@any3", "forget_rouge"]
    assert res[0]["test"] == WILCOXON and res[0]["p"] == pytest.approx(wilcoxon([1 / 3] * 8).pvalue)
    assert res[1]["test"] == MCNEMAR and res[1]["discordant"] == [8, 0] and res[1]["p"] == pytest.approx(2 / 2**8)
    assert res[2]["test"] == WILCOXON and res[2]["a"] == pytest.approx(1 / 3) and res[2]["b"] == 0


# --- the command ------------------------------------------------------------------------------------------------


def _run_dir(root: Path, name: str, rows: list[dict]) -> Path:
    from obliviate.runs.results import results_document

    d = root / name
    d.mkdir()
    runs = sorted({r["run"] for r in rows})
    results = {
        run: {"refusal_rate": sum(r["refused"] for r in rows if r["run"] == run) / sum(r["run"] == run for r in rows)}
        for run in runs
    }
    (d / "results.json").write_text(json.dumps(results_document({"suite": "public"}, results, {})))
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _insert(reg_path: Path, out_dir: Path) -> str:
    with RunStore(reg_path) as reg:
        run_id = reg.insert_run({"command": "refusal-eval", "status": "done", "out_dir": str(out_dir)})
        reg.record_results(run_id, out_dir)
    return run_id


def test_runs_compare_says_beyond_noise(tmp_path, capsys):
    reg = tmp_path / "reg.sqlite"
    a, b = discordant(10, 2)
    ida = _insert(reg, _run_dir(tmp_path, "a", refusal_rows("derta", a)))
    idb = _insert(reg, _run_dir(tmp_path, "b", refusal_rows("derta", b)))
    code, out, err = run_cli(["runs", "compare", ida, idb, "--registry", reg, "--json"], capsys)
    assert code == 0, err
    [row] = json.loads(out)["paired"]["rows"]
    assert row["test"] == MCNEMAR and row["p"] == pytest.approx(158 / 4096) and row["verdict"] == "beyond noise at 0.05"
    code, out, err = run_cli(["runs", "compare", ida, idb, "--registry", reg, "--alpha", "0.01"], capsys)
    assert code == 0, err
    assert "exact McNemar" in out and "10 vs 2 discordant" in out and "0.0386" in out and "within noise" in out
    assert "32 matched" in out
    # two runs inside one results file, named as ID:RUN
    both = _insert(reg, _run_dir(tmp_path, "ab", refusal_rows("x", a) + refusal_rows("y", b)))
    code, out, err = run_cli(["runs", "compare", f"{both}:x", f"{both}:y", "--registry", reg, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["paired"]["rows"][0]["discordant"] == [10, 2]
    # different prompts: said plainly, no test
    other = _insert(reg, _run_dir(tmp_path, "c", refusal_rows("derta", {f"q{i}": True for i in range(5)})))
    code, out, err = run_cli(["runs", "compare", ida, other, "--registry", reg], capsys)
    assert code == 0 and "different prompts" in out and "McNemar" not in out, err


@pytest.mark.parametrize(
    "args,must",
    [(["--alpha", "0"], "--alpha"), (["SUB:nope"], "no samples of 'nope'")],
)
def test_runs_compare_bad_input(tmp_path, capsys, args, must):
    reg = tmp_path / "reg.sqlite"
    a, b = discordant(1, 1, 1)
    ida = _insert(reg, _run_dir(tmp_path, "a", refusal_rows("m", a)))
    idb = _insert(reg, _run_dir(tmp_path, "b", refusal_rows("m", b)))
    refs = [ida, f"{idb}:nope"] if args[0].startswith("SUB") else [ida, idb, *args]
    code, _, err = run_cli(["runs", "compare", *refs, "--registry", reg], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and must in lines[0] and "Traceback" not in err, err


def test_runs_compare_without_samples(tmp_path, capsys):
    reg = tmp_path / "reg.sqlite"
    a, b = discordant(1, 1, 1)
    ida = _insert(reg, _run_dir(tmp_path, "a", refusal_rows("m", a)))
    db = _run_dir(tmp_path, "b", refusal_rows("m", b))
    (db / "samples.jsonl").unlink()
    idb = _insert(reg, db)
    code, out, err = run_cli(["runs", "compare", ida, idb, "--registry", reg], capsys)
    assert code == 0 and f"run {idb} has no samples.jsonl" in out, err
