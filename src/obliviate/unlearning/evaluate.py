"""Evaluate unlearned models on a world or TOFU directory: the metrics table, rows and report."""

from __future__ import annotations

from pathlib import Path

from obliviate.benchmarks.layouts import eval_data
from obliviate.core.errors import UsageError
from obliviate.core.jsonio import write_json
from obliviate.core.outputs import check_output, output_dir
from obliviate.metrics.fluency import collapse_reasons
from obliviate.runs.results import results_document


def run_eval(
    runs: dict[str, str | list[str]],
    data: Path,
    out: Path,
    *,
    oracle: str | list[str] | None = None,
    forget_split: str = "forget10",
    suite: str = "world",
    guards: list[str] = (),
    prompt_format=None,
    samples: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int = 0,
    utility=None,
    grad_norm: bool = False,
) -> dict:
    """Score named models on the forget / retain / world-facts / holdout splits: what `obliviate eval` runs, and
    `obliviate.evaluate`.

    Args:
        runs: {run name: model directory, or a list of directories: one method unlearned with several seeds,
            reported as the mean of their figures, and as one distribution for KLoM}.
        data: a world directory (`suite` "world") or a TOFU directory ("tofu"); `forget_split` the forget split.
        out: the results directory (refused if it holds anything else).
        oracle: a model never trained on the forget split, scored first: forget quality and privleak compare
            each run with it. A list of several (oracles trained with different seeds, `finetune --oracles K`):
            the first is THE oracle, and all of them form the distribution that KLoM (`klom_forget`,
            `klom_retain`, `klom_holdout`) and `forget_quality_pooled` compare each run with
            (`obliviate.metrics.klom`; the oracle's own row: against the other oracles).
        guards: guard directories applied to every run (not to the oracle).
        prompt_format: how items are written for a model without a chat template
            (`obliviate.models.prompt_format.prompt_format`).
        samples, temperature, top_p, seed: N generated answers per question, sampled at `temperature` (default
            1.0 once N > 1) and `top_p`, answer j with seed `seed + j`; N = 1 with neither set is greedy. The
            generation figures (value accuracy, ROUGE) are then per answer, and `{split}_value_acc@any{N}` adds the
            share of questions answered with the value in at least one of N answers.

        utility: an `obliviate.engine.utility.UtilitySpec` (`--utility lm-eval:TASKS`): lm-eval's figures of each
            model, `utility/<task>/<metric>` in its run (the mean over a run's models), config["utility"] and
            n_samples["utility/<task>"].
        grad_norm: also run the GradNorm MIA (`mia_gradnorm_auc`): one backward pass per forget and holdout item
            and model (`obliviate.engine.evaluate.grad_norms`).

    Writes OUT/results.json (the results schema: config, results {run: metrics}, higher_is_better, n_samples,
    intervals {run: {metric: n and 95% bootstrap interval over items}} for the per-item figures, collapse {run:
    the collapse alarms it raised, `obliviate.metrics.fluency.collapse_reasons`}), OUT/samples.jsonl
    (every scored item) and OUT/report.md. Returns the results.json document."""
    from obliviate.data.schema import write_jsonl
    from obliviate.engine.evaluate import run_metrics, sample_rows, score_model
    from obliviate.engine.sampling import sampling_for
    from obliviate.guards.base import attach_guards
    from obliviate.models.load import check_model_dir, load_model
    from obliviate.report.markdown import write_report

    splits = eval_data(Path(data), forget_split, suite)
    oracles = [str(oracle)] if isinstance(oracle, (str, Path)) else [str(p) for p in oracle or ()]
    members = {n: [str(p)] if isinstance(p, (str, Path)) else [str(q) for q in p] for n, p in runs.items()}
    if oracles and "oracle" in members:
        raise UsageError("a run is named 'oracle' beside --oracle; name it otherwise with NAME=DIR")
    if not all(members.values()):
        raise UsageError(f"run {next(n for n, m in members.items() if not m)!r} has no model directory")
    models = ({"oracle": oracles[0]} if oracles else {}) | {n: m[0] if len(m) == 1 else m for n, m in members.items()}
    paths = [*oracles, *(p for m in members.values() for p in m)]
    guards = [str(g) for g in guards]
    inputs = (*paths, data, *guards)
    check_output(out, "eval", inputs=inputs)
    draw = {"samples": samples, "temperature": temperature, "top_p": top_p, "seed": seed}
    sampling_for(**draw)  # a bad --samples / --temperature / --top-p fails before a model loads
    for path in paths:
        check_model_dir(path)
    from obliviate.engine.utility import (
        add_utility,
        check_utility,
        mean_found,
        run_utility,
        utility_config,
        utility_counts,
    )

    utility = check_utility(utility)  # an unknown task or a missing dataset fails before a model loads
    found = {}  # {run: [lm-eval figures of each of its models]}
    with output_dir(out, "eval", inputs=inputs) as o:
        results, records, intervals = {}, [], {}
        scored = {}  # {run: [rows of each of its models]}; "oracle": every oracle, THE oracle first
        from rich.console import Console

        console = Console(stderr=True, log_path=False)
        jobs = [("oracle", p) for p in oracles] + [(n, p) for n, m in members.items() for p in m]
        for name, path in jobs:
            console.log(f"evaluating {name} ({path})")
            net, tok = load_model(path, prompt_format=prompt_format)
            attach_guards(net, tok, () if name == "oracle" else guards)
            rows = score_model(net, tok, splits, grad_norm=grad_norm, **draw)
            scored.setdefault(name, []).append(rows)
            if name == "oracle" and len(scored[name]) > 1:
                continue  # the further oracles form the distribution: no row of their own
            j = len(scored[name]) - 1
            grouped = name != "oracle" and len(members[name]) > 1  # samples.jsonl rows say which of its models
            records += [s | {"model": j} if grouped else s for s in sample_rows(name, rows)]
            if utility:
                found.setdefault(name, []).append(run_utility(net, tok, utility, name, seed))
        oracle_rows = scored["oracle"][0] if oracles else None
        for name, ms in scored.items():
            # a run of several models (unlearning seeds): the mean of their figures, intervals over their pooled
            # items; KLoM and pooled forget quality against every oracle (THE oracle: against the others)
            ms, against = (ms[:1], ms[1:]) if name == "oracle" else (ms, scored.get("oracle", []))
            results[name] = run_metrics(ms, oracle_rows, against, lambda r: any_of_n_rates(r, samples))
            pooled = {s: [row for r in ms for row in r[s]] for s in ms[0]}
            intervals[name] = item_intervals(pooled, results[name], seed=seed)
        found = {name: mean_found(f) for name, f in found.items()}
        for name, f in found.items():
            add_utility(f, name, results, intervals)
        doc = results_document(
            {
                "data": str(data),
                "suite": suite,
                "forget_split": forget_split,
                "models": models,
                **({"oracles": oracles} if len(oracles) > 1 else {}),
                "guards": list(guards),
                "samples": samples,
                "temperature": temperature,
                "top_p": top_p,
                "seed": seed,
                **(prompt_format.config() if prompt_format else {}),
                **({"utility": utility_config(utility, found)} if utility else {}),
            },
            results,
            {s: len(v) for s, v in splits.items()} | utility_counts(found),
            {"intervals": intervals, "collapse": {name: collapse_reasons(r) for name, r in results.items()}},
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
