"""The results.json schema as code (`obliviate.runs.schema`): hand-made good and bad documents (one test per kind of
problem), `check_results` on files, docs/outputs.md against the code, and the diffusion demo's and `eval --suite
diffusion`'s output. The other demos and commands are validated where their own tests read their output."""

import copy
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest

from obliviate.core.errors import UsageError
from obliviate.core.jsonio import write_json
from obliviate.runs.results import results_document
from obliviate.runs.schema import KEYS, RESULTS_SCHEMA, check_results, schema_table, validate_results
from tests.cli.test_cli import run_cli

ROOT = Path(__file__).resolve().parents[2]


def good() -> dict:
    """A document with every section of the schema, built the way the writers build it."""
    results = {
        "target": {"forget_quality": 1e-20, "forget_rouge": 0.95, "privleak": None},
        "npo": {"forget_quality": 0.4, "forget_rouge": float("nan"), "privleak": -3.5},
        "uce/star": {"ua": 1.0, "pre_asr": 0.0},
    }
    extra = {
        "seconds": {"target": 26.5, "npo": 5},
        "wall_seconds": 110.2,
        "refusal_positions": {"npo": {"0-0": 0.5, "1-4": 0.5, "20+": 0.0}},
        "by_source": {"npo": {"harmful": {"harmbench": 0.25}, "benign": {"xstest": 0.0}}},
        "by_category": {"npo": {"harmful": {"cyber": 1.0}}},
        "relearn": {"npo": {"recovered_value_rouge": 0.1, "curve": [0.1, 0.2]}},
        "refusal_direction": {"layer": 3, "kl": 0.01},
        "base": {"steps": 5, "train_seconds": 3.0, "factor_accuracy": {"object": 0.9}},
        "audit": {
            "uce/star": {
                "concept": "star",
                "factor": "object",
                "prompts": ["a red star"],
                "pre_asr": 0.0,
                "attacks": {"p4d": {"asr": 0.0}},
                "skipped": {"unlearndiffatk": "time budget"},
            }
        },
        "curves": {"npo": {"scalability_curve": [0.1, 0.2], "sustainability_curve": []}},
        "collapse": {"target": [], "npo": ["forget_fluency 0.120 < 0.5"]},
        "leaderboard": {"forget10": {"npo": {"forget_quality": [0.4, 0.1]}}},
        "intervals": {
            "npo": {
                "forget_rouge": {
                    "value": 0.5,
                    "n": 40,
                    "samples": 1,
                    "lo": 0.35,
                    "hi": 0.65,
                    "level": 0.95,
                    "method": "percentile bootstrap over prompts",
                }
            }
        },
        "over_seeds": {"npo": {"forget_quality": [0.4, 0.1]}},
        "attacks": {"npo": {"templates": {"asr": 0.5, "seconds": 3.0}}},
    }
    return results_document({"seed": 0}, results, {"forget": 40, "retain": 0}, extra)


def test_a_document_with_every_section_is_valid():
    doc = good()
    assert set(doc) == set(KEYS)  # the hand-made document covers the whole schema
    assert validate_results(doc) == []
    assert validate_results(results_document({}, {}, {})) == []  # the least a writer writes


def test_nan_written_by_write_json_reads_back_valid(tmp_path):
    write_json(tmp_path / "results.json", good())
    doc = check_results(tmp_path / "results.json")
    assert math.isnan(doc["results"]["npo"]["forget_rouge"])


@pytest.mark.parametrize("key", [k.name for k in RESULTS_SCHEMA if k.required])
def test_each_required_key_is_required(key):
    doc = good()
    del doc[key]
    assert validate_results(doc) == [f"missing required key {key!r}"]


def test_optional_keys_may_be_left_out():
    doc = good()
    for k in RESULTS_SCHEMA:
        if not k.required:
            del doc[k.name]
    assert validate_results(doc) == []


def bad(mutate) -> list[str]:
    doc = good()
    mutate(doc)
    return validate_results(doc)


CASES = {
    "unknown key": (
        lambda d: d.update(extra=1),
        "unknown key 'extra': not in the results.json schema (obliviate.runs.schema)",
    ),
    "string": (
        lambda d: d.update(obliviate_version=""),
        "'obliviate_version' must be a non-empty string, got string ''",
    ),
    "nullable string": (lambda d: d.update(git=3), "'git' must be a non-empty string or null, got number 3"),
    "timestamp": (
        lambda d: d.update(created="yesterday"),
        "'created' must be an ISO 8601 time with a time zone, got string 'yesterday'",
    ),
    "timestamp without a zone": (
        lambda d: d.update(created="2026-12-06T10:00:00"),
        "'created' must be an ISO 8601 time with a time zone, got string '2026-12-06T10:00:00'",
    ),
    "object": (lambda d: d.update(config=[1]), "'config' must be an object, got list"),
    "required entry": (lambda d: d["versions"].pop("python"), "'versions' is missing 'python'"),
    "map of strings": (
        lambda d: d["versions"].update(torch=2),
        "versions['torch'] must be a non-empty string, got number 2",
    ),
    "results not an object": (
        lambda d: d.update(results=[]),
        "'results' must be an object {run: {metric: number or null}}, got list",
    ),
    "run not an object": (
        lambda d: d["results"].update(npo=0.5),
        "results['npo'] must be an object {metric: number or null}, got number 0.5",
    ),
    "metric a string": (
        lambda d: d["results"]["npo"].update(privleak="-3.5"),
        "results['npo']['privleak'] must be a number or null, got string '-3.5'",
    ),
    "metric a boolean": (
        lambda d: d["results"]["npo"].update(privleak=True),
        "results['npo']['privleak'] must be a number or null, got boolean true",
    ),
    "direction": (
        lambda d: d["higher_is_better"].update(forget_quality="yes"),
        "higher_is_better['forget_quality'] must be a boolean or null, got string 'yes'",
    ),
    "direction of no metric": (
        lambda d: d["higher_is_better"].update(model_utility=True),
        "higher_is_better['model_utility'] names no metric of any run in 'results'",
    ),
    "negative count": (
        lambda d: d["n_samples"].update(forget=-1),
        "n_samples['forget'] must be a whole number >= 0, got number -1",
    ),
    "fractional count": (
        lambda d: d["n_samples"].update(forget=1.5),
        "n_samples['forget'] must be a whole number >= 0, got number 1.5",
    ),
    "negative seconds": (
        lambda d: d.update(wall_seconds=-1.0),
        "'wall_seconds' must be a number >= 0, got number -1.0",
    ),
    "record field missing": (lambda d: d["base"].pop("steps"), "'base' is missing 'steps'"),
    "nested record field missing": (
        lambda d: d["audit"]["uce/star"].pop("pre_asr"),
        "audit['uce/star'] is missing 'pre_asr'",
    ),
    "nested record field": (
        lambda d: d["audit"]["uce/star"].update(prompts="a red star"),
        "audit['uce/star']['prompts'] must be a list [string, ...], got string 'a red star'",
    ),
    "list item": (
        lambda d: d["curves"]["npo"]["scalability_curve"].append(None),
        "curves['npo']['scalability_curve'][2] must be a number, got null",
    ),
    "list length": (
        lambda d: d["leaderboard"]["forget10"]["npo"].update(forget_quality=[0.4]),
        "leaderboard['forget10']['npo']['forget_quality'] must be a list [number, number], got a list of 1",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_kind_of_problem_is_one_readable_line(case):
    mutate, problem = CASES[case]
    assert bad(mutate) == [problem]


@pytest.mark.parametrize("key", [k.name for k in RESULTS_SCHEMA if k.per_run])
def test_sections_by_run_name_only_runs_of_results(key):
    def ghost(d):
        d[key]["ghost"] = copy.deepcopy(next(iter(d[key].values())))

    assert bad(ghost) == [f"{key}['ghost'] names no run of 'results'"]


def test_every_problem_is_reported():
    problems = bad(lambda d: d.update(git=3, extra=1, wall_seconds="1"))
    assert len(problems) == 3
    assert validate_results([good()]) == ["the document must be a JSON object, got list"]


def test_check_results_names_the_file_and_the_first_problem(tmp_path):
    f = tmp_path / "results.json"
    write_json(f, good())
    assert check_results(f)["config"] == {"seed": 0}
    doc = good()
    doc.update(git=3, wall_seconds="1")
    write_json(f, doc)
    with pytest.raises(UsageError) as e:
        check_results(f)
    assert str(e.value) == f"{f}: 'git' must be a non-empty string or null, got number 3 (and 1 more)"
    f.write_text('{"results": ', encoding="utf-8")
    with pytest.raises(UsageError, match=re.escape(f"{f}: not valid JSON")):
        check_results(f)
    f.write_text("[1]", encoding="utf-8")
    with pytest.raises(UsageError, match=re.escape(f"{f}: the document must be a JSON object, got list")):
        check_results(f)
    with pytest.raises(UsageError, match=re.escape(f"{tmp_path / 'none.json'}: cannot read it")):
        check_results(tmp_path / "none.json")


def page_section(title: str) -> str:
    text = (ROOT / "docs" / "outputs.md").read_text(encoding="utf-8")
    start = text.index(f"### {title}\n")
    return text[start : text.index("\n### ", start + 1)]


def test_docs_list_the_schema_of_the_code():
    """docs/outputs.md's table names the schema's keys, no more and no fewer, with their shapes as the code has
    them; the page's example results.json holds schema keys only."""
    section = page_section("The schema")
    listed = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)
    assert set(listed) == set(KEYS), set(listed) ^ set(KEYS)
    assert schema_table() in section, "docs/outputs.md: paste obliviate.runs.schema.schema_table() under The schema"
    example = json.loads(re.search(r"```json\n(.*?)```", page_section("`results.json`"), flags=re.S).group(1))
    assert set(example) <= set(KEYS) and {k.name for k in RESULTS_SCHEMA if k.required} <= set(example)


@pytest.fixture(scope="module")
def diffusion_demo(tmp_path_factory):
    """The diffusion demo at a size below the smoke size (one eraser, one cheap attack: ~20 s on 2 CPU cores)."""
    from obliviate.demos.diffusion import SMOKE, run_diffusion_demo

    size = replace(
        SMOKE,
        erasers=("uce",),
        attacks=("concept_arithmetic",),
        classifier_steps=5,
        train_batch_size=8,
        train_steps=2,
        channels=(8, 16),
        attack_options={"concept_arithmetic": {"samples": 1, "budget": 1, "steps": 2}},
    )
    out = tmp_path_factory.mktemp("diffusion_schema") / "demo"
    run_diffusion_demo(out, size=size, progress=False, workers=1)
    return out


def test_diffusion_demo_output_is_valid(diffusion_demo):
    doc = check_results(diffusion_demo / "results.json")
    assert validate_results(doc) == []
    assert {"audit", "base", "wall_seconds"} <= set(doc) and set(doc["audit"]) == {"uce/star"}
    # the same document, broken: each check of its own sections fails
    broken = copy.deepcopy(doc)
    broken["audit"]["uce/star"].pop("pre_asr")
    broken["base"]["factor_accuracy"]["object"] = "0.9"
    broken["audit"]["esd_x/star"] = broken["audit"]["uce/star"]
    assert validate_results(broken) == [
        "audit['uce/star'] is missing 'pre_asr'",
        "audit['esd_x/star'] is missing 'pre_asr'",
        "base['factor_accuracy']['object'] must be a number, got string '0.9'",
        "audit['esd_x/star'] names no run of 'results'",
    ]


def test_diffusion_eval_output_is_valid(diffusion_demo, tmp_path, capsys):
    d = diffusion_demo
    code, _, err = run_cli(
        [
            "eval",
            "--suite",
            "diffusion",
            "--data",
            d / "world",
            "--classifiers",
            d / "classifiers",
            "--concept",
            "star",
            "--model",
            f"base={d / 'models' / 'base'}",
            "--limit",
            2,
            "--ddim-steps",
            2,
            "--out",
            tmp_path / "ev",
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert validate_results(doc) == [] and set(doc["results"]) == {"base"}
