"""`obliviate demo --utility lm-eval:TASKS`: the world and refusal demos report lm-eval's figures for every run."""

import json
from functools import partial

import pytest

from obliviate.engine.utility import parse_utility
from obliviate.runs.schema import validate_results
from tests.engine.test_utility import world_rows, write_task

pytestmark = pytest.mark.usefixtures("one_thread")


def test_world_demo_utility_is_each_methods_mean_over_its_seeds(tmp_path, world_dir, monkeypatch):
    import obliviate.data.world as world
    import obliviate.demos.world as demo
    from obliviate.engine import utility as utility_mod

    monkeypatch.setattr(
        world, "WorldSpec", partial(world.WorldSpec, n_people=100, n_holdout_people=10, n_retain_eval=40)
    )
    spec = parse_utility("lm-eval:tiny_mc", write_task(tmp_path / "tasks", world_rows(world_dir, n=4)), 0)
    seen, real = [], utility_mod.run_utility

    def spy(model, tok, spec, name, seed=0):
        found = real(model, tok, spec, name, seed)
        seen.append((name, found["values"]["utility/tiny_mc/acc"]))
        return found

    monkeypatch.setattr(demo, "run_utility", spy, raising=False)
    monkeypatch.setattr(utility_mod, "run_utility", spy)
    out = tmp_path / "d"
    doc = demo.run_demo(out, methods=["grad_ascent"], finetune_steps=3, progress=False, workers=1, unlearn_seeds=2,
                        utility=spec)  # fmt: skip
    assert validate_results(json.loads((out / "results.json").read_text())) == []
    by = dict(seen)
    assert sorted(by) == ["grad_ascent", "grad_ascent@seed1", "oracle", "target"]
    r = doc["results"]
    assert r["target"]["utility/tiny_mc/acc"] == by["target"]
    assert r["grad_ascent"]["utility/tiny_mc/acc"] == pytest.approx((by["grad_ascent"] + by["grad_ascent@seed1"]) / 2)
    assert doc["n_samples"]["utility/tiny_mc"] == 4 and doc["config"]["utility"]["tasks"] == ["tiny_mc"]
    assert doc["intervals"]["target"]["utility/tiny_mc/acc"]["n"] == 4 and "grad_ascent" not in doc["intervals"]


def test_refusal_demo_reports_utility(tmp_path, world_dir):
    from obliviate.demos.refusal import run_refusal_demo

    spec = parse_utility("lm-eval:tiny_mc", write_task(tmp_path / "tasks", world_rows(world_dir, n=4)), 0)
    doc = run_refusal_demo(tmp_path / "r", people=100, finetune_steps=5, align_steps=2, attack=False, eval_limit=4,
                           max_new_tokens=4, methods=["refusal_sft"], progress=False, utility=spec)  # fmt: skip
    assert all(0 <= doc["results"][run]["utility/tiny_mc/acc"] <= 1 for run in ("target", "refusal_sft"))
    assert doc["n_samples"]["utility/tiny_mc"] == 4 and validate_results(doc) == []


def test_demo_utility_bad_input(tmp_path, capsys):
    from tests.cli.test_bad_inputs import assert_one_line

    out = tmp_path / "o"
    assert_one_line(["demo", "--suite", "diffusion", "--utility", "lm-eval:x", "--out", out], capsys, "--utility")
    assert_one_line(["demo", "--utility", "mmlu", "--out", out], capsys, "lm-eval:TASK")
    assert not out.exists()
