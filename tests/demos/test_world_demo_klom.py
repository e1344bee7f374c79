"""`obliviate demo --oracles K --unlearn-seeds S`: K oracles, S seeds per method, KLoM beside the usual figures."""

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_with_oracles_and_unlearn_seeds(tmp_path, monkeypatch):
    from functools import partial

    import obliviate.data.world as world
    from obliviate.demos.world import run_demo

    # the conftest world's size: a quarter of the demo's people, so four models train and score in seconds
    monkeypatch.setattr(
        world, "WorldSpec", partial(world.WorldSpec, n_people=100, n_holdout_people=10, n_retain_eval=40)
    )
    out = tmp_path / "d"
    doc = run_demo(
        out, methods=["grad_ascent"], finetune_steps=3, progress=False, workers=1, oracles=2, unlearn_seeds=2
    )
    assert (out / "models" / "oracle_seed1").is_dir() and (out / "models" / "grad_ascent@seed1").is_dir()
    r = doc["results"]
    assert list(r) == ["target", "oracle", "grad_ascent"]
    assert all(k in r[run] for run in ("target", "grad_ascent") for k in ("klom_forget", "forget_quality_pooled"))
    assert "klom_forget" not in r["oracle"]  # against one other oracle: no distribution
    assert doc["config"]["oracles"] == 2 and doc["config"]["unlearn_seeds"] == 2
    assert set(doc["collapse"]) == set(r) and all(isinstance(v, list) for v in doc["collapse"].values())
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted({x["model"] for x in rows if x["run"] == "grad_ascent"}) == [0, 1]
