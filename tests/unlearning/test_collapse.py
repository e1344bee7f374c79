"""The collapse alarm: training stops early on it (`unlearn --stop-on-collapse`), `eval` flags runs in results.json
and the reports, and `eval --mia-gradnorm` adds the GradNorm MIA."""

import json

import pytest

from obliviate.engine import collapse as collapse_mod
from obliviate.engine.collapse import CollapseMonitor
from obliviate.runs.schema import validate_results
from tests.cli.test_cli import assert_bad_input, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stop_when_ends_training_after_that_step(tiny_dir, world_dir):
    from obliviate.data.schema import load_qa
    from obliviate.engine.train import FineTune, TrainConfig, train
    from obliviate.models.load import load_model
    from obliviate.unlearning.run import qa_pairs

    model, tok = load_model(str(tiny_dir))
    parts = {"retain": qa_pairs(load_qa(world_dir / "retain90.jsonl")[:8])}
    cfg = TrainConfig(retain_batch_size=4, checkpoint_every=0, progress=False)
    asked = []
    stop = lambda step, m: asked.append(step) or ("enough" if step == 2 else None)  # noqa: E731
    _, res = train(model, tok, FineTune(steps=5), parts, cfg, stop_when=stop)
    assert asked == [1, 2] and res.steps == 2 and res.stopped == "enough" and len(res.history) == 2
    _, res = train(model, tok, FineTune(steps=3), parts, cfg)
    assert res.steps == 3 and res.stopped is None


def test_collapse_monitor_checks_every_n_steps(monkeypatch):
    replies = iter([["Mira was born in Velden.", "in 1873"], ["the the the the", ""]])
    calls = []

    def fake_generate(model, tok, prompts, max_new_tokens):
        calls.append((len(prompts), max_new_tokens))
        return next(replies)

    monkeypatch.setattr(collapse_mod, "generate", fake_generate)
    monkeypatch.setattr(collapse_mod, "prompt_ids", lambda tok, q: [1])

    class Model:
        training = True

        def eval(self):
            self.training = False

        def train(self, mode=True):
            self.training = mode

    m = CollapseMonitor(["q1", "q2", "q3"], every=2, prompts=2)
    assert m(1, Model(), None) is None and calls == []  # between checks: nothing generated
    assert m(2, Model(), None) is None  # fluency (1 + 1) / 2
    reason = m(4, Model(), None)  # fluency (1/3 + 0) / 2
    assert calls == [(2, 32), (2, 32)] and m.checks == [{"step": 2, "fluency": 1.0}, {"step": 4, "fluency": 0.1667}]
    assert reason.startswith("forget fluency 0.167 < 0.5 at step 4") and m.reason == reason


def test_unlearn_stop_on_collapse_command(tiny_dir, world_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(collapse_mod, "fluency", lambda text: 0.0)  # every answer degenerate: stop at the 1st check
    out = tmp_path / "ga"
    base = ["unlearn", "--model", tiny_dir, "--suite", "world", "--data", world_dir, "--method", "grad_ascent"]
    args = base + ["--steps", "6", "--stop-on-collapse", "--collapse-every", "2", "--out", out]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps"] == 2 and len(log["history"]) == 2 and log["collapse_checks"] == [{"step": 2, "fluency": 0.0}]
    assert log["stopped"].startswith("forget fluency 0.000 < 0.5 at step 2")
    assert "grad_ascent: 2 steps" in stdout and "stopped on collapse" in err and (out / "config.json").is_file()
    assert_bad_input(
        base + ["--stop-on-collapse", "--collapse-every", "0", "--out", tmp_path / "bad"],
        capsys,
        tmp_path / "bad",
        "--collapse-every must be >= 1",
    )


def test_eval_flags_collapse_and_adds_reference_and_gradnorm_mias(tiny_dir, world_dir, tmp_path, capsys):
    world = tmp_path / "world"  # the world's first 6 questions of each file
    world.mkdir()
    for f in world_dir.glob("*.jsonl"):
        (world / f.name).write_text("".join(f.read_text().splitlines(keepends=True)[:6]))
    out = tmp_path / "eval"
    args = ["eval", "--model", f"tiny={tiny_dir}", "--oracle", tiny_dir, "--data", world, "--mia-gradnorm"]
    code, stdout, err = run_cli(args + ["--out", out], capsys)
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert validate_results(doc) == []
    m = doc["results"]["tiny"]
    assert m["mia_reference_auc"] == 0.5  # the run is the oracle itself: every calibrated score is 0
    assert 0 <= m["mia_gradnorm_auc"] <= 1 and 0 <= m["forget_fluency"] <= 1 and 0 <= m["retain_fluency"] <= 1
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(("grad_norm" in s) == (s["split"] in ("forget", "holdout")) for s in samples)
    # the flag follows the thresholds: an untrained model may or may not babble, the flag must say which
    from obliviate.metrics.fluency import collapse_reasons

    assert doc["collapse"] == {run: collapse_reasons(r) for run, r in doc["results"].items()}
    assert ("(collapsed)" in stdout) == bool(doc["collapse"]["tiny"])


def test_reports_mark_collapsed_runs():
    from obliviate.report.headline import headline_tables
    from obliviate.report.markdown import table
    from obliviate.runs.results import results_document

    results = {
        "npo": {"forget_quality": 0.4, "privleak": -3.0, "forget_fluency": 0.99},
        "ga_hot": {"forget_quality": 1e-9, "privleak": 97.0, "forget_fluency": 0.05},
    }
    doc = results_document({}, results, {"forget": 2})  # no `collapse` section: the thresholds decide
    lines = table(doc).splitlines()
    assert lines[2].startswith("npo ") and lines[3].startswith("ga_hot (collapsed)")
    html = headline_tables(doc, {})
    assert html.count("⚠ collapsed") == 1 and "forget_fluency 0.050 &lt; 0.5; privleak 97.0 &gt; 50" in html
    doc["collapse"] = {"npo": ["privleak 60.0 > 50"], "ga_hot": []}  # the writer's section wins
    assert "npo (collapsed)" in table(doc) and "ga_hot (collapsed)" not in table(doc)


def test_report_md_lists_the_alarms(tmp_path):
    from obliviate.report.markdown import write_report
    from obliviate.runs.results import results_document

    doc = results_document({}, {"ga_hot": {"privleak": 97.0}}, {"forget": 2}, {"collapse": {"ga_hot": ["x > 1"]}})
    write_report(tmp_path / "report.md", doc)
    text = (tmp_path / "report.md").read_text()
    assert "| ga_hot (collapsed) |" in text and "## Collapse alarm" in text and "- **ga_hot**: x > 1" in text
