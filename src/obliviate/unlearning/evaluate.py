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
    samples: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int = 0,
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
        samples, temperature, top_p, seed: N generated answers per question, sampled at `temperature` (default
            1.0 once N > 1) and `top_p`, answer j with seed `seed + j`; N = 1 with neither set is greedy. The
            generation figures (value accuracy, ROUGE) are then per answer, and `{split}_value_acc@any{N}` adds the
            share of questions answered with the value in at least one of N answers.

    Writes OUT/results.json (the results schema: config, results {run: metrics}, higher_is_better, n_samples,
    intervals {run: {metric: n and 95% bootstrap interval over items}} for the per-item figures), OUT/samples.jsonl
    (every scored item) and OUT/report.md. Returns the results.json document."""
    from obliviate.data.schema import write_jsonl
    from obliviate.engine.evaluate import metrics_from_rows, sample_rows, score_model
    from obliviate.engine.sampling import sampling_for
    from obliviate.guards.base import attach_guards
    from obliviate.models.load import check_model_dir, load_model
    from obliviate.report.markdown import write_report

    splits = eval_data(Path(data), forget_split, suite)
    models = {name: str(path) for name, path in (({"oracle": oracle} if oracle else {}) | runs).items()}
    guards = [str(g) for g in guards]
    inputs = (*models.values(), data, *guards)
    check_output(out, "eval", inputs=inputs)
    draw = {"samples": samples, "temperature": temperature, "top_p": top_p, "seed": seed}
    sampling_for(**draw)  # a bad --samples / --temperature / --top-p fails before a model loads
    for path in models.values():
        check_model_dir(path)
    with output_dir(out, "eval", inputs=inputs) as o:
        oracle_rows, results, records, intervals = None, {}, [], {}
        from rich.console import Console

        console = Console(stderr=True, log_path=False)
        for name, path in models.items():
            console.log(f"evaluating {name} ({path})")
            net, tok = load_model(path, prompt_format=prompt_format)
            attach_guards(net, tok, () if name == "oracle" else guards)
            rows = score_model(net, tok, splits, **draw)
            if name == "oracle":
                oracle_rows = rows
            results[name] = metrics_from_rows(rows, oracle_rows) | any_of_n_rates(rows, samples)
            intervals[name] = item_intervals(rows, results[name], seed=seed)
            records += sample_rows(name, rows)
        doc = results_document(
            {
                "data": str(data),
                "suite": suite,
                "forget_split": forget_split,
                "models": models,
                "guards": list(guards),
                "samples": samples,
                "temperature": temperature,
                "top_p": top_p,
                "seed": seed,
                **(prompt_format.config() if prompt_format else {}),
            },
            results,
            {s: len(v) for s, v in splits.items()},
            {"intervals": intervals},
        )
        write_jsonl(o / "samples.jsonl", records)
        write_json(o / "results.json", doc)
        write_report(o / "report.md", doc)
    return doc


def _hits(rows: list[dict]) -> list[list[bool]]:
    """Each row with a value: its answers' value hits (one bool per generated answer)."""
    return [r["value_hit"] if isinstance(r["value_hit"], list) else [r["value_hit"]] for r in rows if r.get("value")]


def any_of_n_rates(rows: dict[str, list[dict]], samples: int) -> dict[str, float]:
    """With N > 1 answers per question: `{split}_value_acc@any{N}`, the share of questions (with a value) answered
    with it in at least one of the N answers, for each split that has `{split}_value_acc` (`metrics.tofu`)."""
    out = {}
    for split in ("forget", "retain", "world_facts") if samples > 1 else ():
        hits = _hits(rows.get(split) or [])
        if hits:
            out[f"{split}_value_acc@any{samples}"] = sum(map(any, hits)) / len(hits)
    return out


def item_intervals(rows: dict[str, list[dict]], metrics: dict, level: float = 0.95, seed: int = 0) -> dict:
    """{metric: interval} (`obliviate.metrics.intervals`) of the figures among `metrics` that are means over items:
    value accuracy (and its any-of-N), ROUGE-L recall, exact memorisation and extraction strength; a bootstrap over
    items, clustered over an item's N answers. Split-level statistics (forget quality, model utility, truth ratio,
    Prob., privleak, MIA AUCs) have no per-item value and get none."""
    from obliviate.metrics.intervals import any_of_n, mean_interval, rate_interval
    from obliviate.metrics.memorization import exact_memorization, extraction_strength
    from obliviate.metrics.tofu import rouge_l_recall

    out = {}
    for split, split_rows in rows.items():
        hits, key = _hits(split_rows), f"{split}_value_acc"
        if key in metrics and hits:
            out[key] = rate_interval(hits, level, seed)
            n = max(map(len, hits))
            if f"{key}@any{n}" in metrics:
                out[f"{key}@any{n}"] = any_of_n(hits, level, seed)
        if f"{split}_rouge" in metrics and split_rows:
            answers = [r["generated"] if isinstance(r["generated"], list) else [r["generated"]] for r in split_rows]
            per_item = [[rouge_l_recall(r["answer"], g) for g in got] for r, got in zip(split_rows, answers)]
            out[f"{split}_rouge"] = mean_interval(per_item, level, seed)
    for name, fn in (("exact_memorization", exact_memorization), ("extraction_strength", extraction_strength)):
        if f"forget_{name}" in metrics and rows.get("forget"):
            values = [fn(r["pred_ids"], r["target_ids"]) for r in rows["forget"]]
            out[f"forget_{name}"] = mean_interval(values, level, seed)
    return out
