"""Evaluate unlearned models on a world or TOFU directory: the metrics table, rows and report."""

from __future__ import annotations

from pathlib import Path

from obliviate.benchmarks.layouts import eval_data
from obliviate.core.jsonio import write_json
from obliviate.core.outputs import check_output, output_dir
from obliviate.runs.results import results_document


def run_eval(
    runs: dict[str, str],
    data: Path,
    out: Path,
    *,
    oracle: str | None = None,
    forget_split: str = "forget10",
    suite: str = "world",
    guards: list[str] = (),
    prompt_format=None,
) -> dict:
    """Score named models on the forget / retain / world-facts / holdout splits: what `obliviate eval` runs, and
    `obliviate.evaluate`.

    Args:
        runs: {run name: model directory}.
        data: a world directory (`suite` "world") or a TOFU directory ("tofu"); `forget_split` the forget split.
        out: the results directory (refused if it holds anything else).
        oracle: a model never trained on the forget split, scored first: forget quality and privleak compare
            each run with it.
        guards: guard directories applied to every run (not to the oracle).
        prompt_format: how items are written for a model without a chat template
            (`obliviate.models.prompt_format.prompt_format`).

    Writes OUT/results.json (the results schema: config, results {run: metrics}, higher_is_better, n_samples),
    OUT/samples.jsonl (every scored item) and OUT/report.md. Returns the results.json document."""
    from obliviate.data.schema import write_jsonl
    from obliviate.engine.evaluate import metrics_from_rows, sample_rows, score_model
    from obliviate.guards.base import attach_guards
    from obliviate.models.load import check_model_dir, load_model
    from obliviate.report.markdown import write_report

    splits = eval_data(Path(data), forget_split, suite)
    models = {name: str(path) for name, path in (({"oracle": oracle} if oracle else {}) | runs).items()}
    guards = [str(g) for g in guards]
    inputs = (*models.values(), data, *guards)
    check_output(out, "eval", inputs=inputs)
    for path in models.values():
        check_model_dir(path)
    with output_dir(out, "eval", inputs=inputs) as o:
        oracle_rows, results, samples = None, {}, []
        from rich.console import Console

        console = Console(stderr=True, log_path=False)
        for name, path in models.items():
            console.log(f"evaluating {name} ({path})")
            net, tok = load_model(path, prompt_format=prompt_format)
            attach_guards(net, tok, () if name == "oracle" else guards)
            rows = score_model(net, tok, splits)
            if name == "oracle":
                oracle_rows = rows
            results[name] = metrics_from_rows(rows, oracle_rows)
            samples += sample_rows(name, rows)
        doc = results_document(
            {
                "data": str(data),
                "suite": suite,
                "forget_split": forget_split,
                "models": models,
                "guards": list(guards),
                **(prompt_format.config() if prompt_format else {}),
            },
            results,
            {s: len(v) for s, v in splits.items()},
        )
        write_jsonl(o / "samples.jsonl", samples)
        write_json(o / "results.json", doc)
        write_report(o / "report.md", doc)
    return doc
