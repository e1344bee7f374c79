"""Human-readable views of results.json: a plain-text table for the terminal and report.md."""

from __future__ import annotations

from pathlib import Path

from obliviate.metrics.fluency import collapse_reasons

# The columns a reader needs first; every other metric is in results.json.
HEADLINE = [
    "forget_quality",
    "model_utility",
    "forget_rouge",
    "forget_value_acc",
    "retain_value_acc",
    "privleak",
    "mia_mink_auc",
    "forget_truth_ratio",
    # with several oracles (`eval --oracle` repeated, `demo --oracles K`): obliviate.metrics.klom
    "forget_quality_pooled",
    "klom_forget",
    "klom_retain",
    "klom_holdout",
    # on a world with misinformation (`obliviate world --misinformation K`): obliviate.metrics.restor
    "recovered_acc",
]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return f"{v:.2e}"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _cell(doc: dict, run: str, metric: str, value) -> str:
    """The value, with its n and bootstrap interval where results.json has one: `0.875 [0.750, 0.975] n=40`."""
    from obliviate.metrics.intervals import format_interval

    iv = (doc.get("intervals") or {}).get(run, {}).get(metric)
    return format_interval(iv, value) if iv and iv.get("lo") is not None and value is not None else _fmt(value)


def collapse_of(doc: dict, run: str) -> list[str]:
    """The collapse alarms of `run`: results.json's `collapse` section where the writer made one, else the
    thresholds of `obliviate.metrics.fluency.collapse_reasons` applied to the run's metrics (older documents)."""
    if isinstance(doc.get("collapse"), dict):
        return list(doc["collapse"].get(run) or [])
    metrics = (doc.get("results") or {}).get(run)
    return collapse_reasons(metrics) if isinstance(metrics, dict) else []


def _rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    results = doc["results"]
    cols = [c for c in HEADLINE if any(c in r for r in results.values())]
    target_mu = results.get("target", {}).get("model_utility")
    head = ["run", *cols] + (["MU / target"] if target_mu else []) + (["seconds"] if "seconds" in doc else [])
    body = []
    for run, r in results.items():
        row = [run + (" (collapsed)" if collapse_of(doc, run) else ""), *[_cell(doc, run, c, r.get(c)) for c in cols]]
        if target_mu:
            row.append(_fmt(r["model_utility"] / target_mu) if "model_utility" in r else "-")
        if "seconds" in doc:
            row.append(_fmt(doc["seconds"].get(run)))
        body.append(row)
    return head, body


def table(doc: dict) -> str:
    head, body = _rows(doc)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def write_report(path: Path, doc: dict) -> None:
    head, body = _rows(doc)
    hib = doc.get("higher_is_better", {})
    arrow = {True: "higher is better", False: "lower is better", None: "closest to the oracle is best"}
    lines = [
        "# obliviate report",
        "",
        f"Created {doc['created']} by obliviate {doc['obliviate_version']} (git {doc.get('git') or 'n/a'}).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *["| " + " | ".join(r) + " |" for r in body],
        "",
        "## How to read this",
        "",
        "- **forget_quality**: KS-test p-value between the forget-set truth ratios of a run and of the oracle "
        "(a model never trained on the forget set). 1 = indistinguishable; the target is far below 0.05. "
        "It is two-sided: over-unlearning fails too.",
        "- **model_utility**: harmonic mean of probability, ROUGE-L and truth ratio on retained people and "
        "world facts (TOFU). Compare it with the target's (column MU / target); the oracle itself lands a "
        "little below the target.",
        "- **privleak**: MUSE's relative Min-K% membership AUC vs the oracle, in %. About -100 = the forget set is "
        "as exposed as in the target; 0 = like the oracle; large positive = over-unlearned.",
        "- **forget_value_acc / retain_value_acc**: share of greedy answers that contain the true attribute value.",
        *(
            [
                "- **klom_forget / klom_retain / klom_holdout** (KLoM, Georgiev et al. 2024): per item, the KL "
                "divergence of binned answer margins between the oracles (several seeds) and the run's models; the "
                "95th percentile over the split's items. 0 = like retraining; the oracle's row is against the "
                "other oracles. **forget_quality_pooled**: forget quality against every oracle's truth ratios."
            ]
            if any("klom_forget" in r for r in doc["results"].values())
            else []
        ),
        "",
        "## Metric directions",
        "",
        *[f"- `{m}`: {arrow[v]}" for m, v in sorted(hib.items())],
    ]
    collapsed = {run: collapse_of(doc, run) for run in doc["results"]}
    if any(collapsed.values()):
        lines += [
            "",
            "## Collapse alarm",
            "",
            "Runs marked (collapsed) have degenerate answers or an over-unlearned forget set "
            "(`obliviate.metrics.fluency`): their other figures do not describe a usable model.",
            "",
            *[f"- **{run}**: {'; '.join(why)}" for run, why in collapsed.items() if why],
        ]
    if doc.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in doc["notes"]]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
