"""Each wing's headline, first on the page: the runs of a results file grouped by wing, one table per wing that leads
with its headline figures, and the figures drawn from them.

- unlearning runs lead with forget quality and model utility (memorisation figures follow);
- refusal runs lead with refusal, over-refusal and refusal at depth (`refusal_rate@prefill{k}`, by k);
- concept-erasure runs lead with UA, IRA and CRA; any other run is in a table of its own.
A run belongs to the first wing whose figures it has, so a refusal run never sits under unlearning columns.

Where results.json carries "intervals" ({run: {metric: {"value", "n", "lo", "hi", "level", ...}}}, or
{metric: {...}} for a file of one run), a cell shows the value, its interval and n, and the figures (`pareto`,
`refusal`, `depth`) draw error bars. `headline_figures` returns plain dicts with the fields of `sections.Figure`,
as `curves.curve_figures` does.
"""

from __future__ import annotations

import math
import re
from html import escape

from obliviate.report import figures as F
from obliviate.report.markdown import collapse_of

REFERENCES = ("target", "oracle")
WINGS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("unlearning", "Unlearning: forget quality and model utility", ("forget_quality", "model_utility")),
    ("refusal", "Refusal: refusal, over-refusal and refusal at depth", ("refusal_rate", "over_refusal_rate")),
    ("erasure", "Concept erasure: unlearning and retain accuracy", ("ua", "ira", "cra")),
)
LEADING = {  # headline too, where present (KLoM with several oracles; RESTOR's recovery on a misinformation world)
    "unlearning": ("model_utility_ratio", "klom_forget", "klom_retain", "klom_holdout", "recovered_acc"),
    "erasure": ("over_erasure",),
}
WORST = re.compile(r"@(any|all)\d+$")  # the worst case over N sampled replies: refusal_rate@all5, ...@any5
DEPTH = re.compile(r"refusal_rate@prefill(\d+)")


def num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def runs_of(s) -> dict[str, dict]:
    return (s.results or {}).get("results") or {}


def label(s, run: str, many: bool) -> str:
    return f"{s.name}:{run}" if many else run


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.2e}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4) else f"{v:.3f}"
    return escape(str(v))


# --- intervals ---------------------------------------------------------------------------------------------------


def _interval(v) -> bool:
    return isinstance(v, dict) and num(v.get("lo")) and num(v.get("hi")) and v["lo"] <= v["hi"]


def intervals_of(doc: dict | None) -> dict[str, dict[str, dict]]:
    """{run: {metric: interval}} from a results document's "intervals": per run, or flat for a file of one run;
    malformed entries are left out."""
    raw = (doc or {}).get("intervals")
    runs = (doc or {}).get("results") or {}
    if not isinstance(raw, dict) or not isinstance(runs, dict):
        return {}
    out: dict[str, dict[str, dict]] = {}
    flat = {k: v for k, v in raw.items() if _interval(v)}
    if flat and len(runs) == 1:
        out[next(iter(runs))] = flat
    for run, per in raw.items():
        if run in runs and isinstance(per, dict):
            got = {k: v for k, v in per.items() if _interval(v)}
            if got:
                out.setdefault(run, {}).update(got)
    return out


def bounds(iv: dict | None) -> tuple[float, float] | None:
    return (iv["lo"], iv["hi"]) if iv else None


def _cell(v, iv: dict | None) -> str:
    if not iv or not num(v):
        return f"<td>{fmt(v)}</td>"
    level = iv.get("level") if num(iv.get("level")) else 0.95
    n, samples = iv.get("n"), iv.get("samples")
    what = (
        f"{level:.0%} interval"
        + (f", n = {n} prompts" if num(n) else "")
        + (f" x {samples} samples" if num(samples) and samples > 1 else "")
        + (f"; {iv['method']}" if isinstance(iv.get("method"), str) else "")
    )
    ci = f"[{fmt(float(iv['lo']))}, {fmt(float(iv['hi']))}]"
    return (
        f'<td title="{escape(what)}">{fmt(v)} <span class=ci>{ci}</span>'
        + (f" <span class=n>n={int(n)}</span>" if num(n) else "")
        + "</td>"
    )


# --- the tables --------------------------------------------------------------------------------------------------


def wing_of(metrics: dict) -> str:
    for wing, _, keys in WINGS:
        if any(k in metrics for k in keys) or (wing == "refusal" and any(DEPTH.fullmatch(k) for k in metrics)):
            return wing
    return "other"


def columns(wing: str, runs: dict[str, dict]) -> tuple[list[str], list[str]]:
    """(headline columns, the other columns) of a wing's runs, each only where some run has it."""
    present = list(dict.fromkeys(k for m in runs.values() for k in m))
    keys = dict((w, k) for w, _, k in WINGS).get(wing, ())
    head = [k for k in (*keys, *LEADING.get(wing, ())) if k in present]
    if wing == "refusal":  # each rate's worst case over N replies beside it, then the depths
        head = [w for k in head for w in (k, *(x for x in present if WORST.sub("", x) == k and x != k))]
        head += sorted((k for k in present if DEPTH.fullmatch(k)), key=lambda k: int(DEPTH.fullmatch(k).group(1)))
    return head, [k for k in present if k not in head]


def _collapse_mark(doc: dict, run: str) -> str:
    """A visible mark on a collapsed run's row (`markdown.collapse_of`), its reasons on hover."""
    why = collapse_of(doc, run)
    return f' <span class=collapsed title="{escape("; ".join(why))}">⚠ collapsed</span>' if why else ""


def headline_tables(doc: dict, registry: dict) -> str:
    """One table per wing present in the document's results: headline columns first (shaded), then the rest."""
    runs = {r: m for r, m in (doc.get("results") or {}).items() if isinstance(m, dict)}
    if not runs:
        return ""
    # the refusal figures' directions, which the metric registry (and so "higher_is_better") does not hold
    rates = {k for m in runs.values() for k in m if k.startswith(("refusal_rate", "over_refusal_rate"))}
    hib = {k: k.startswith("refusal_rate") for k in rates}
    hib |= doc.get("higher_is_better") if isinstance(doc.get("higher_is_better"), dict) else {}
    ivs = intervals_of(doc)
    arrow = {True: " ↑", False: " ↓", None: " ◎"}
    groups: dict[str, dict[str, dict]] = {}
    for run, m in runs.items():
        groups.setdefault(wing_of(m), {})[run] = m
    titles = {w: t for w, t, _ in WINGS} | {"other": "Other runs"}
    html = []
    for wing in [*[w for w, _, _ in WINGS], "other"]:
        if wing not in groups:
            continue
        head, rest = columns(wing, groups[wing])
        th = lambda m, cls: (
            f'<th{cls} title="{escape(F.describe(m, registry) or "")}">{escape(m)}{arrow[hib[m]] if m in hib else ""}'
            "</th>"
        )
        header = "".join(th(m, " class=head") for m in head) + "".join(th(m, "") for m in rest)
        body = "".join(
            f"<tr><th>{escape(str(run))}{_collapse_mark(doc, run)}</th>"
            + "".join(_cell(m.get(k), ivs.get(run, {}).get(k)) for k in head + rest)
            + "</tr>"
            for run, m in groups[wing].items()
        )
        html.append(
            f"<h4>{escape(titles[wing]) if len(groups) > 1 or wing != 'other' else 'Results'}</h4>"
            f'<div class="scroll"><table class="num results" data-wing="{wing}"><thead><tr><th>run</th>{header}'
            f"</tr></thead><tbody>{body}</tbody></table></div>"
        )
    shown = any(k in ivs.get(r, {}) for r in runs for k in runs[r])
    return "".join(html) + (
        "<p class=note>↑ higher is better, ↓ lower is better, ◎ closest to the oracle is best; the shaded columns are "
        "each wing's headline figures; hover a column name for its definition"
        + ("; [lo, hi] is the 95% interval and n the prompts it is over (hover a cell for its method)" if shown else "")
        + ".</p>"
    )


# --- the headline figures ----------------------------------------------------------------------------------------


def _pareto(sources, many) -> list[dict]:
    points = []
    for s in sources:
        runs, ivs = runs_of(s), intervals_of(s.results)
        target_mu = runs.get("target", {}).get("model_utility")
        for run, m in runs.items():
            if num(m.get("forget_quality")) and num(m.get("model_utility")):
                iv = ivs.get(run, {})
                points.append(
                    {
                        "label": label(s, run, many),
                        "y": m["forget_quality"],
                        "mu": m["model_utility"],
                        "ratio": m["model_utility"] / target_mu if num(target_mu) and target_mu else None,
                        "reference": run in REFERENCES,
                        "yb": bounds(iv.get("forget_quality")),
                        "mub": bounds(iv.get("model_utility")),
                    }
                )
        if s.leaderboard:  # bench: mean over seeds per method and split
            groups: dict[str, list[dict]] = {}
            for key, m in (s.leaderboard.get("results") or {}).items():
                method, _, rest = key.partition("@")
                groups.setdefault(f"{method}@{rest.split('@')[0]}", []).append(m)
            for key, ms in groups.items():
                fq = [m["forget_quality"] for m in ms if num(m.get("forget_quality"))]
                mu = [m["model_utility"] for m in ms if num(m.get("model_utility"))]
                ratio = [m["model_utility_ratio"] for m in ms if num(m.get("model_utility_ratio"))]
                if fq and mu:
                    points.append(
                        {
                            "label": label(s, key, many),
                            "y": sum(fq) / len(fq),
                            "mu": sum(mu) / len(mu),
                            "ratio": sum(ratio) / len(ratio) if len(ratio) == len(ms) else None,
                            "reference": key.startswith("target@"),
                        }
                    )
        if s.sweep:
            tmu = s.sweep.get("target_model_utility")
            for p in s.sweep.get("points", []):
                m = p.get("metrics", {})
                if num(m.get("forget_quality")) and num(m.get("model_utility")):
                    opts = " ".join(f"{k}={v}" for k, v in p.get("options", {}).items())
                    points.append(
                        {
                            "label": label(s, f"{s.sweep.get('method')} {opts}", many),
                            "y": m["forget_quality"],
                            "mu": m["model_utility"],
                            "ratio": m["model_utility"] / tmu if num(tmu) and tmu else None,
                            "reference": False,
                        }
                    )
    if len([p for p in points if not p["reference"]]) < 1 or len(points) < 2:
        return []
    relative = all(p["ratio"] is not None for p in points)
    for p in points:
        p["x"] = p["ratio"] if relative else p["mu"]
        if p.get("mub"):  # the ratio's bounds: the run's own interval over the target's utility (taken as fixed)
            p["xb"] = tuple(b * p["x"] / p["mu"] for b in p["mub"]) if relative and p["mu"] else p["mub"]
    xlabel = "model utility / the target's" if relative else "model utility"
    front = sorted(F.pareto_front([p for p in points if not p["reference"]]))
    bars = any(p.get("xb") or p.get("yb") for p in points)
    return [
        {
            "id": "pareto",
            "title": "Forget quality vs model utility: the Pareto front",
            "body": F.pareto(points, xlabel),
            "caption": "Each point is a run. Up is forgetting like the oracle, right is keeping the rest; the starred "
            "runs are Pareto-optimal (no other run is better on both). Target and oracle are references. "
            + ("Error bars: 95% intervals. " if bars else "")
            + f"Pareto-optimal: {', '.join(front)}.",
            "metrics": ["forget_quality", "model_utility"] + (["model_utility_ratio"] if relative else []),
        }
    ]


def _refusal(sources, many, order) -> list[dict]:
    pts, bars = {}, {}
    for s in sources:
        ivs = intervals_of(s.results)
        for run, m in runs_of(s).items():
            if num(m.get("refusal_rate")) and num(m.get("over_refusal_rate")):
                pts[label(s, run, many)] = (m["over_refusal_rate"], m["refusal_rate"])
                iv = ivs.get(run, {})
                bars[label(s, run, many)] = (bounds(iv.get("over_refusal_rate")), bounds(iv.get("refusal_rate")))
    if not pts:
        return []
    drawn = any(b != (None, None) for b in bars.values())
    return [
        {
            "id": "refusal",
            "title": "Refusal vs over-refusal",
            "body": F.refusal_scatter(pts, order, bars),
            "caption": "A method should refuse harmful prompts (up) without refusing their benign look-alikes (left)."
            + (" Error bars: 95% intervals over prompts." if drawn else ""),
            "metrics": ["refusal_rate", "over_refusal_rate"],
        }
    ]


def _depth(sources, many, order) -> list[dict]:
    curves, bars, names = {}, {}, set()
    for s in sources:
        ivs = intervals_of(s.results)
        for run, m in runs_of(s).items():
            pts = [(int(mt.group(1)), v) for k, v in m.items() if (mt := DEPTH.fullmatch(k)) and num(v)]
            if pts:
                names |= {f"refusal_rate@prefill{k}" for k, _ in pts}
                key = label(s, run, many)
                curves[key] = sorted(pts + ([(0, m["refusal_rate"])] if num(m.get("refusal_rate")) else []))
                iv = ivs.get(run, {})
                bars[key] = {
                    k: bounds(iv.get("refusal_rate" if k == 0 else f"refusal_rate@prefill{k}")) for k, _ in curves[key]
                }
    if not curves:
        return []
    drawn = any(b for per in bars.values() for b in per.values())
    return [
        {
            "id": "depth",
            "title": "Refusal at depth",
            "body": F.depth_curves(curves, order, bars),
            "caption": "Refusal rate when k tokens of a harmful answer are already in the reply (k = 0: the plain "
            "refusal rate). A refusal that holds only at k = 0 is shallow."
            + (" Error bars: 95% intervals over prompts." if drawn else ""),
            "metrics": ["refusal_rate", *sorted(names, key=lambda n: int(n.rsplit("prefill", 1)[1]))],
        }
    ]


def headline_figures(sources, many: bool, order: list[str]) -> list[dict]:
    """The wings' headline figures, in the order of the tables: the Pareto front, refusal vs over-refusal, depth."""
    return _pareto(sources, many) + _refusal(sources, many, order) + _depth(sources, many, order)
