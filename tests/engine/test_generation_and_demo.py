import json

import pytest

from obliviate.engine.generation import generate
from obliviate.models.encode import prompt_ids
from obliviate.models.load import load_model
from obliviate.runs.schema import validate_results


def test_batched_left_padded_generation_equals_one_by_one(target_dir):
    model, tok = load_model(str(target_dir))
    qs = ["Where was Kara Brask born?", "What is the capital of Arvandia?", "Which instrument does Lo play?"]
    prompts = [prompt_ids(tok, q) for q in qs]
    assert len({len(p) for p in prompts}) > 1  # different lengths, so padding is exercised
    batched = generate(model, tok, prompts, max_new_tokens=12, batch_size=8)
    single = [generate(model, tok, [p], max_new_tokens=12)[0] for p in prompts]
    assert batched == single


@pytest.mark.slow  # the whole world demo (about 170 s): `make test-slow`, and `make demo` itself
def test_demo_acceptance(tmp_path):
    """The demo on the default world: the figures the README promises (about 2 minutes)."""
    from obliviate.demos.world import run_demo

    doc = run_demo(tmp_path / "demo", progress=False, guards=True)
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert validate_results(saved) == []
    res = saved["results"]
    assert list(res)[:2] == ["target", "oracle"]
    assert res["target"]["forget_rouge"] >= 0.9 and res["target"]["forget_quality"] <= 1e-3
    assert res["oracle"]["forget_quality"] == pytest.approx(1.0)
    mu = res["target"]["model_utility"]
    # ECO (issue 10's acceptance), applied to the target without training: forget value accuracy at most the
    # oracle's + 0.05, retain and world-facts value accuracy at least 0.98 x the target's, a gate that flags at
    # most 2% of retain questions
    eco, tgt = res["target+eco"], res["target"]
    assert eco["forget_value_acc"] <= res["oracle"]["forget_value_acc"] + 0.05, eco
    assert eco["retain_value_acc"] >= 0.98 * tgt["retain_value_acc"], eco
    assert eco["world_facts_value_acc"] >= 0.98 * tgt["world_facts_value_acc"], eco
    fit = json.loads((tmp_path / "demo" / "guards" / "eco" / "guard.json").read_text())["report"]
    assert fit["gate_flag_rate_retain"] <= 0.02, fit
    assert "target+guard" in res
    good = [
        m
        for m, r in res.items()
        if m not in ("target", "oracle")
        and "+" not in m
        and r["forget_quality"] >= 0.05
        and r["model_utility"] >= 0.9 * mu
    ]
    assert good, {m: (r["forget_quality"], r["model_utility"] / mu) for m, r in res.items()}
    for key in ("forget_quality", "model_utility", "forget_rouge", "privleak"):
        assert all(key in r for r in res.values())
    assert (tmp_path / "demo" / "samples.jsonl").stat().st_size > 0
    assert (tmp_path / "demo" / "report.md").is_file()
    assert doc["wall_seconds"] > 0


def test_a_failed_demo_leaves_no_worker_scratch(tmp_path, monkeypatch):
    """The workers' tokenizer copy (OUT/.tokenizer) is removed when a job fails, not only after success."""
    import obliviate.demos.world as demo

    def boom(job):
        raise RuntimeError("job failed")

    monkeypatch.setattr(demo, "_run_job", boom)
    with pytest.raises(RuntimeError, match="job failed"):
        demo.run_demo(tmp_path / "d", methods=["grad_ascent"], progress=False, workers=1)
    assert (tmp_path / "d" / "world").is_dir() and not (tmp_path / "d" / ".tokenizer").exists()
