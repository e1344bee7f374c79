"""Which figures the loaded run directories support, and the data each one is drawn from.

`figures(sources)` returns `Figure`s in reading order; a figure whose data is absent is simply not made. Each figure
names the metrics it shows, so the page can print their definitions beside it. Each wing's headline figures come
first (`headline.py`: the Pareto front, refusal vs over-refusal, refusal at depth), memorisation after them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from obliviate.report import curves as C
from obliviate.report import diffusion as D
from obliviate.report import figures as F
from obliviate.report import headline as H
from obliviate.report.headline import REFERENCES
from obliviate.report.headline import label as _label
from obliviate.report.headline import num as _num
from obliviate.report.headline import runs_of as _runs

MIA_SCORES = ("loss", "zlib", "mink", "minkpp")
# what a guarded run ("base+guard") is compared on, in this order, where both runs carry the metric
GUARD_METRICS = (
    "forget_value_acc",
    "forget_rouge",
    "mia_mink_auc",
    "retain_value_acc",
    "world_facts_value_acc",
    "model_utility",
    "refusal_rate",
    "refusal_rate@prefill20",
    "over_refusal_rate",
    "heldout_refusal_rate@prefill20",
    "people_accuracy",
)


@dataclass
class Source:
    name: str
    path: Path
    results: dict | None = None  # results.json (or muse.json): the results_document schema
    leaderboard: dict | None = None
    audit: dict | None = None
    calibration: dict | None = None
    sweep: dict | None = None
    samples: list[dict] = field(default_factory=list)
    samples_total: int = 0
    grids: list[Path] = field(default_factory=list)
    guards: dict[str, dict] = field(default_factory=dict)  # guard name -> its fit report
    report_dir: Path | None = None  # the page's folder: links to the run's files are relative to it


@dataclass
class Figure:
    id: str
    title: str
    body: str  # inline <svg> or <img> elements
    caption: str = ""  # plain text; escaped by the page
    metrics: list[str] = field(default_factory=list)
    table: list[list] | None = None  # optional numbers beside the figure: header row + rows


def figures(sources: list[Source]) -> list[Figure]:
    many = len(sources) > 1
    order = [_label(s, r, many) for s in sources for r in _runs(s)]
    out: list[Figure] = []
    for make in (
        _headline,  # each wing's headline figures first, memorisation after them
        _roc,
        _truth_ratios,
        _relearn,
        _audit,
        _curves,
        _calibration,
        _guards,
        _diffusion,
    ):
        out += make(sources, many, order)
    return out


def _diffusion(sources, many, order) -> list[Figure]:
    return [Figure(**f) for f in D.diffusion_figures(sources, many)]  # erasure, trade-off, findings, grids


def _headline(sources, many, order) -> list[Figure]:
    return [Figure(**f) for f in H.headline_figures(sources, many, order)]  # the Pareto front, refusal, depth


def _roc(sources, many, order) -> list[Figure]:
    from sklearn.metrics import roc_curve

    out = []
    for s in sources:
        scores: dict[str, dict] = {}
        for run in dict.fromkeys(r.get("run") for r in s.samples):
            rows = [r for r in s.samples if r.get("run") == run and r.get("split") in ("forget", "holdout")]
            for score in MIA_SCORES:
                pairs = [(r["split"] == "forget", r[f"mia_{score}"]) for r in rows if _num(r.get(f"mia_{score}"))]
                labels = {y for y, _ in pairs}
                if labels == {True, False}:
                    fpr, tpr, _ = roc_curve([y for y, _ in pairs], [v for _, v in pairs])
                    auc = float(sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1)))
                    scores.setdefault(score, {})[_label(s, str(run), many)] = (fpr, tpr, auc)
        if scores:
            out.append(
                Figure(
                    f"roc-{len(out)}",
                    "Membership inference: ROC curves" + (f" ({s.name})" if many else ""),
                    F.roc_curves(scores, order),
                    "Per-sample MIA scores from samples.jsonl: forget items (members) against holdout "
                    "items (never trained). The diagonal is chance; the goal is the oracle's curve, not "
                    "the diagonal (an oracle can sit below it).",
                    [f"mia_{k}_auc" for k in scores] + ["privleak"],
                )
            )
    if out:
        return out
    aucs = {}  # no per-sample scores: the results carry AUCs only, so bars instead of curves
    for s in sources:
        for run, m in _runs(s).items():
            vals = {k: m.get(f"mia_{k}_auc") for k in MIA_SCORES}
            if any(_num(v) for v in vals.values()):
                aucs[_label(s, run, many)] = vals
    if not aucs:
        return []
    used = [k for k in MIA_SCORES if any(_num(v[k]) for v in aucs.values())]
    svg = F.bar_panels(
        [
            (
                "MIA ROC AUC (forget vs holdout)",
                list(aucs),
                {k: [v[k] if _num(v[k]) else None for v in aucs.values()] for k in used},
            )
        ],
        "ROC AUC",
        cols=1,
    )
    return [
        Figure(
            "roc-auc",
            "Membership inference: AUC (no per-sample scores)",
            svg,
            "The results carry only ROC AUCs (no per-sample MIA scores in samples.jsonl), so bars replace "
            "the ROC curves. Compare each run with the oracle's AUC.",
            [f"mia_{k}_auc" for k in used],
        )
    ]


def _truth_ratios(sources, many, order) -> list[Figure]:
    out = []
    for s in sources:
        by_run: dict[str, list[float]] = {}
        for r in s.samples:
            if r.get("split") == "forget" and _num(r.get("truth_ratio")):
                by_run.setdefault(str(r.get("run")), []).append(r["truth_ratio"])
        if not by_run:
            continue
        refs = {_label(s, k, many): v for k, v in by_run.items() if k in REFERENCES}
        methods = [k for k in by_run if k not in REFERENCES][:12]
        fq = {run: m.get("forget_quality") for run, m in _runs(s).items()}
        panels = {
            f"{run} (FQ {fq[run]:.2g})" if _num(fq.get(run)) else run: refs | {_label(s, run, many): by_run[run]}
            for run in methods
        } or {"target and oracle": refs}
        out.append(
            Figure(
                f"truth-{len(out)}",
                "Truth ratios on the forget set" + (f" ({s.name})" if many else ""),
                F.truth_ratio_hists(panels, order),
                "One panel per method: its forget-set truth-ratio distribution (filled) over the target's "
                "(red) and the oracle's (dashed black). Forget quality is the KS-test p-value between a "
                "run's distribution and the oracle's.",
                ["forget_truth_ratio", "forget_quality"],
            )
        )
    return out


def _relearn(sources, many, order) -> list[Figure]:
    panels = []
    for s in sources:
        relearn = (s.results or {}).get("relearn") or {}
        runs = {_label(s, r, many): f for r, f in relearn.items() if isinstance(f, dict)}
        keys = [
            k
            for k in dict.fromkeys(k for f in runs.values() for k in f)
            if all(not _num(f.get(k)) or -1.5 <= f[k] <= 1.5 for f in runs.values())
        ]
        if runs and keys:
            panels.append(
                (
                    f"relearning attack ({s.name})" if many else "relearning attack",
                    keys,
                    {r: [f.get(k) if _num(f.get(k)) else None for k in keys] for r, f in runs.items()},
                )
            )
    if not panels:
        return []
    return [
        Figure(
            "relearn",
            "Relearning attack, beside the oracle",
            F.bar_panels(panels, cols=1, colors={r: F.color_of(r, order) for p in panels for r in p[2]}),
            "Each run fine-tuned briefly on part of the forget set; the held-out forget values it recovers show "
            "knowledge that was suppressed rather than removed (compare with the oracle's bar).",
            ["relearn_recovered"],
        )
    ]


def _audit(sources, many, order) -> list[Figure]:
    out = []
    for s in sources:
        doc = s.audit or {}
        attacks = doc.get("attacks") or {}
        title = "Audit: attacks beside the oracle" + (f" ({s.name})" if many else "")
        if "pre_asr" in doc:  # a diffusion audit: one success rate per attack
            names = [a for a, r in attacks.items() if _num(r.get("asr"))]
            if names:
                svg = F.bar_panels(
                    [
                        (
                            "attack success rate",
                            ["pre-attack", *names],
                            {"ASR": [doc["pre_asr"], *[attacks[a]["asr"] for a in names]]},
                        )
                    ],
                    "rate",
                    cols=1,
                )
                title = title.replace("beside the oracle", "on the erased model")
                out.append(
                    Figure(
                        f"audit-{len(out)}",
                        title,
                        svg,
                        "Share of prompts whose generation shows the erased "
                        "concept, before any attack and under each attack.",
                        ["pre_asr", "asr"],
                    )
                )
            continue
        # with a guard, a search attack also ran on the bare model ("unguarded"); its curves are C's figures
        bare = any(isinstance(e, dict) and isinstance(e.get("unguarded"), dict) for e in attacks.values())
        cols = ["unguarded"] * bare + ["model", "oracle", "target"]
        panels, table = [], [["attack", "figure", *cols]]
        for name, entry in attacks.items():
            roles = [r for r in cols if isinstance(entry.get(r), dict)]
            figs = [*dict.fromkeys(k for r in roles for k, v in entry[r].items() if _num(v) and not C.is_curve_key(k))]
            table += [[name, k, *[entry.get(r, {}).get(k) for r in cols]] for k in figs]
            small = [k for k in figs if all(not _num(entry[r].get(k)) or -1.5 <= entry[r][k] <= 1.5 for r in roles)]
            if small:
                panels.append(
                    (
                        f"{name} ({entry.get('seconds', '?')} s)",
                        small,
                        {r: [entry[r].get(k) if _num(entry[r].get(k)) else None for k in small] for r in roles},
                    )
                )
        for name, why in (doc.get("skipped") or {}).items():
            table.append([name, f"skipped: {why}", *[None] * len(cols)])
        if panels:
            out.append(
                Figure(
                    f"audit-{len(out)}",
                    title,
                    F.bar_panels(panels, colors=C.COLORS),
                    "Each attack on the audited model (blue), the oracle (black) and the target (red); with a "
                    "guard, the search attacks on the bare model too (orange, 'unguarded'). "
                    "Recovery on the model beyond the oracle's means suppressed, not removed; figures "
                    "outside [-1.5, 1.5] are in the table only.",
                    [],
                    table,
                )
            )
    return out


def _curves(sources, many, order) -> list[Figure]:
    return [Figure(**f) for f in C.curve_figures(sources, many)]  # the search attacks: ASR against budget


def _calibration(sources, many, order) -> list[Figure]:
    out = []
    for s in sources:
        c = s.calibration or {}
        if all(isinstance(c.get(k), list) and c[k] for k in ("tau", "refusal_rate", "over_refusal_rate")):
            out.append(
                Figure(
                    f"calibration-{len(out)}",
                    "Refusal-token calibration" + (f" ({s.name})" if many else ""),
                    F.calibration(c),
                    f"Model {c.get('model', '?')}, split {c.get('split', '?')}: "
                    f"{c.get('n_harmful', '?')} harmful and {c.get('n_benign', '?')} benign prompts; the "
                    "reply is a refusal when p_refuse > tau.",
                    ["refusal_rate", "over_refusal_rate"],
                )
            )
    return out


def _guards(sources, many, order) -> list[Figure]:
    panels, table, used = [], [["guard", "fit figure", "value"]], []
    for s in sources:
        runs = _runs(s)
        for run, m in runs.items():
            base = run.split("+")[0]
            if "+" not in run or base not in runs:
                continue
            keys = [k for k in GUARD_METRICS if _num(m.get(k)) and _num(runs[base].get(k))]
            if keys:
                used += keys
                panels.append(
                    (_label(s, run, many), keys, {base: [runs[base][k] for k in keys], run: [m[k] for k in keys]})
                )
        for name, report in s.guards.items():
            table += [[_label(s, name, many), k, v] for k, v in report.items() if _num(v)]
    if not panels:
        return []
    return [
        Figure(
            "guards",
            "Inference-time guards: the guarded run beside its unguarded model",
            F.bar_panels(panels),
            "Each guard wraps generation of an unchanged model; the first bar is the "
            "model alone, the second the same model with the guard.",
            list(dict.fromkeys(used)),
            table if len(table) > 1 else None,
        )
    ]


def _esc(s: str) -> str:
    import html

    return html.escape(str(s), quote=True)
