"""The report's figures: matplotlib drawn to static SVG strings, inlined by `obliviate.report.html`.

Why static SVG rather than an interactive library: matplotlib is already a dependency, an SVG figure weighs a few
tens of kB and needs no script to render, so the page works offline, prints, and opens fast; plotly would embed
about 4 MB of JavaScript into every report for hover tooltips that the per-sample table already gives.

Every function takes plain data (no file reading) and returns one SVG string; the caller decides which figures the
data supports. Labels come from data files, so `_text` neutralises matplotlib's mathtext (`$...$`).
"""

from __future__ import annotations

import io
import itertools
import math

TARGET_COLOR, ORACLE_COLOR = "#d62728", "#222222"
_salt = itertools.count()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _text(s) -> str:
    """A data string as a literal label: `$` would start mathtext (and can make matplotlib raise); control
    characters, which no font draws, become spaces."""
    return "".join(c if c.isprintable() else " " for c in str(s)).replace("$", r"\$")


def color_of(run: str, order: list[str]):
    """Target red, oracle black, every other run its own tab10/tab20 colour (stable across figures)."""
    plt = _plt()
    base = run.split(":")[-1]
    if base == "target":
        return TARGET_COLOR
    if base == "oracle":
        return ORACLE_COLOR
    others = [r for r in order if r.split(":")[-1] not in ("target", "oracle")]
    i = others.index(run) if run in others else 0
    # the strong tab10 colours while they suffice, else tab20 (light shades included); red is the target's
    palette = (
        [c for j, c in enumerate(plt.cm.tab10.colors) if j != 3]
        if len(others) <= 9
        else [c for j, c in enumerate(plt.cm.tab20.colors) if j not in (6, 7)]
    )
    return palette[i % len(palette)]


def to_svg(fig) -> str:
    """The figure as an inline <svg> element: no XML prologue, text kept as text (small, searchable), and ids
    salted per figure so that several inline SVGs never share a clip-path or marker id."""
    plt = _plt()
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"fig{next(_salt)}"}):
        fig.savefig(buf, format="svg")  # every figure uses constrained layout: no second, "tight" drawing pass
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def _figure(panels: int, width: float = 4.6, height: float = 3.6, cols: int = 3):
    plt = _plt()
    cols = max(1, min(cols, panels))
    rows = math.ceil(panels / cols)
    # constrained layout: panel titles never run into the x labels of the row above
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def error_bar(ax, x: float, y: float, xb=None, yb=None, color="#555555", floor: float | None = None) -> None:
    """An interval around (x, y): `xb` / `yb` are (lo, hi) bounds or None; `floor` clips a log axis's lower end."""
    if xb is None and yb is None:
        return
    clip = (lambda v: max(v, floor)) if floor is not None else (lambda v: v)
    ax.errorbar(
        x,
        y,
        xerr=None if xb is None else [[max(0.0, x - xb[0])], [max(0.0, xb[1] - x)]],
        yerr=None if yb is None else [[max(0.0, y - clip(yb[0]))], [max(0.0, clip(yb[1]) - y)]],
        fmt="none",
        ecolor=color,
        elinewidth=1,
        capsize=2.5,
        alpha=0.8,
        zorder=2,
    )


def pareto(points: list[dict], xlabel: str) -> str:
    """points: {label, x, y, reference} and optional 95% bounds "xb" / "yb" (lo, hi), drawn as error bars;
    y = forget quality (log axis). The front is taken over the non-reference runs: a run is Pareto-optimal when no
    other run has both higher utility and higher forget quality."""
    fig, (ax,) = _figure(1, 7.5, 5.0)
    runs = [p for p in points if not p["reference"]]
    floor = min([p["y"] for p in points if p["y"] > 0] or [1e-30]) / 10
    front = pareto_front(runs)
    for p in points:
        y = max(p["y"], floor)
        error_bar(ax, p["x"], y, p.get("xb"), p.get("yb"), floor=floor)
        if p["reference"]:
            ax.scatter(p["x"], y, marker="D", s=50, color="#999999", zorder=3)
        elif p["label"] in front:
            ax.scatter(p["x"], y, marker="*", s=180, color="#1f77b4", edgecolor="black", zorder=4)
        else:
            ax.scatter(p["x"], y, marker="o", s=40, facecolor="none", edgecolor="#1f77b4", zorder=3)
        ax.annotate(_text(p["label"]), (p["x"], y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    best = sorted((p for p in runs if p["label"] in front), key=lambda p: p["x"])
    if len(best) > 1:
        ax.step(
            [p["x"] for p in best], [max(p["y"], floor) for p in best], where="post", color="#1f77b4", lw=1, alpha=0.6
        )
    ax.set_yscale("log")
    ax.axhline(0.05, color="grey", lw=0.8, ls="--")
    ax.text(ax.get_xlim()[0], 0.05, " p = 0.05", fontsize=7, va="bottom", color="grey")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("forget quality (KS p-value, log scale)")
    ax.set_title("forget quality vs model utility (★ Pareto-optimal, ◆ target / oracle)", fontsize=10)
    ax.grid(alpha=0.3)
    return to_svg(fig)


def pareto_front(points: list[dict]) -> set[str]:
    """Labels of the points that no other point dominates (>= on both axes, > on one)."""
    out = set()
    for p in points:
        if not any(q["x"] >= p["x"] and q["y"] >= p["y"] and (q["x"] > p["x"] or q["y"] > p["y"]) for q in points):
            out.add(p["label"])
    return out


def roc_curves(scores: dict[str, dict[str, tuple]], order: list[str]) -> str:
    """scores: {MIA score name: {run: (fpr, tpr, auc)}}, one panel per score."""
    fig, axes = _figure(len(scores), 4.2, 4.0, cols=4)
    for ax, (score, runs) in zip(axes, scores.items()):
        for run, (fpr, tpr, auc) in runs.items():
            base = run.split(":")[-1]
            ax.plot(
                fpr,
                tpr,
                color=color_of(run, order),
                lw=1.8 if base in ("target", "oracle") else 1.1,
                ls="--" if base == "oracle" else "-",
                label=_text(f"{run} ({auc:.2f})"),
            )
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
        ax.set_title(f"{score} (AUC in legend)", fontsize=9)
        ax.set_xlabel("false positive rate (holdout)")
        ax.set_ylabel("true positive rate (forget)")
        ax.legend(fontsize=6, loc="lower right")
    return to_svg(fig)


def truth_ratio_hists(panels: dict[str, dict[str, list[float]]], order: list[str]) -> str:
    """panels: {title: {run: truth ratios}}: the method's distribution over the target's and the oracle's."""
    import numpy as np

    fig, axes = _figure(len(panels), 4.0, 3.0, cols=3)
    every = [v for p in panels.values() for vs in p.values() for v in vs]
    bins = np.linspace(min(every), max(every), 26) if every and min(every) < max(every) else 25
    for ax, (title, runs) in zip(axes, panels.items()):
        for run, values in runs.items():
            base = run.split(":")[-1]
            if base in ("target", "oracle"):
                ax.hist(
                    values,
                    bins=bins,
                    histtype="step",
                    lw=1.6,
                    color=color_of(run, order),
                    ls="--" if base == "oracle" else "-",
                    label=_text(base),
                )
            else:
                # stepfilled: one polygon per histogram, not one rectangle per bin (smaller SVG, faster drawing)
                ax.hist(
                    values, bins=bins, histtype="stepfilled", alpha=0.45, color=color_of(run, order), label=_text(run)
                )
        ax.set_title(_text(title), fontsize=9)
        ax.set_xlabel("truth ratio (forget split)")
        ax.set_ylabel("questions")
        ax.legend(fontsize=7)
    return to_svg(fig)


def refusal_scatter(points: dict[str, tuple[float, float]], order: list[str], bars: dict | None = None) -> str:
    """points: {run: (over_refusal_rate, refusal_rate)}; the ideal corner is top left. bars: {run: (x bounds,
    y bounds)}, each (lo, hi) or None: 95% intervals drawn as error bars."""
    fig, (ax,) = _figure(1, 8.0, 4.8)
    # a legend rather than labels at the points: refusal runs pile up at (0, 1) and their labels would overlap
    for i, (run, (x, y)) in enumerate(points.items()):
        error_bar(ax, x, y, *(bars or {}).get(run, (None, None)), color=color_of(run, order))
        ax.scatter(
            x,
            y,
            s=60,
            marker="osD^vP*X"[i % 8],
            color=color_of(run, order),
            edgecolor="black",
            lw=0.4,
            zorder=3,
            alpha=0.85,
            label=_text(run),
        )
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("over-refusal rate (benign look-alikes; lower is better)")
    ax.set_ylabel("refusal rate (harmful; higher is better)")
    ax.set_title("refusal vs over-refusal (ideal: top left)", fontsize=10)
    ax.grid(alpha=0.3)
    return to_svg(fig)


def depth_curves(curves: dict[str, list[tuple[int, float]]], order: list[str], bars: dict | None = None) -> str:
    """curves: {run: [(prefill depth k, refusal rate)]}; depth 0 is the plain refusal rate. bars: {run: {k: (lo,
    hi)}}: 95% intervals drawn as error bars."""
    fig, (ax,) = _figure(1, 7.0, 4.6)
    depths = sorted({k for c in curves.values() for k, _ in c})
    for i, (run, pts) in enumerate(curves.items()):
        for k, v in pts:
            error_bar(ax, k, v, None, (bars or {}).get(run, {}).get(k), color=color_of(run, order))
        ax.plot(
            [k for k, _ in pts],
            [v for _, v in pts],
            marker="os^D"[i // 9 % 4],
            ls=("-", "--", ":")[i // 9 % 3],
            color=color_of(run, order),
            label=_text(run),
        )
    ax.set_xticks(depths)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("prefill depth k (tokens of a harmful answer forced before the reply)")
    ax.set_ylabel("refusal rate on harmful prompts")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return to_svg(fig)


def bar_panels(
    panels: list[tuple[str, list[str], dict[str, list]]],
    ylabel: str = "",
    cols: int = 2,
    colors: dict[str, str] | None = None,
) -> str:
    """Grouped bars, one panel per (title, groups, {series: values per group}); None values are left empty."""
    import numpy as np

    plt = _plt()
    widest = max(len(groups) * max(1, len(series)) for _, groups, series in panels)
    fig, axes = _figure(len(panels), max(4.2, min(9.0, 0.32 * widest + 2)), 3.6, cols=cols)
    for ax, (title, groups, series) in zip(axes, panels):
        x = np.arange(len(groups))
        w = 0.8 / max(1, len(series))
        for i, (name, values) in enumerate(series.items()):
            ys = [np.nan if v is None else v for v in values]
            color = (colors or {}).get(name, plt.cm.tab10.colors[i % 10])
            ax.bar(x + (i - (len(series) - 1) / 2) * w, ys, w, label=_text(name), color=color)
        ax.set_xticks(x)
        ax.set_xticklabels(
            [_text(g) for g in groups],
            rotation=30 if len(groups) > 3 else 0,
            ha="right" if len(groups) > 3 else "center",
            fontsize=7,
        )
        ax.set_title(_text(title), fontsize=9)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
        if len(series) > 1:
            ax.legend(fontsize=7)
        every = [v for vs in series.values() for v in vs if v is not None and not math.isnan(v)]
        if every and 0 <= min(every) and max(every) <= 1:  # rates: the full [0, 1] scale, even when all are 0
            ax.set_ylim(0, 1.05)
    return to_svg(fig)


def calibration(curve: dict) -> str:
    """calibration.json: refusal vs over-refusal along the threshold tau, and both rates against tau."""
    fig, (a, b) = _figure(2, 5.0, 4.0)
    a.plot(curve["over_refusal_rate"], curve["refusal_rate"], marker="o")
    for t, x, y in zip(curve["tau"], curve["over_refusal_rate"], curve["refusal_rate"]):
        a.annotate(f"{t:g}", (x, y), fontsize=6, textcoords="offset points", xytext=(3, 3))
    a.set_xlabel("over-refusal rate (benign)")
    a.set_ylabel("refusal rate (harmful)")
    a.set_title("each point is a threshold tau", fontsize=9)
    b.plot(curve["tau"], curve["refusal_rate"], marker="o", label="refusal rate (harmful)")
    b.plot(curve["tau"], curve["over_refusal_rate"], marker="s", label="over-refusal rate (benign)")
    b.set_xlabel("tau (refuse when p_refuse > tau)")
    b.legend(fontsize=7)
    for ax in (a, b):
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    return to_svg(fig)


# Metrics that the registry (`obliviate.metrics.METRICS`) does not hold: the refusal suites', the diffusion
# suite's and the audit's. Keys ending in "*" match a prefix; "heldout_" and "[source]" variants are resolved
# by `describe`.
GLOSSARY = {
    "refusal_rate": "share of harmful test prompts whose reply the judge counts as a refusal (higher is better)",
    "over_refusal_rate": "share of benign look-alike prompts refused (lower is better)",
    "refusal_rate@prefill*": "refusal rate when the first k tokens of a harmful answer are forced before the "
    "reply (refusal at depth; shallow alignment falls off with k)",
    "refusal_position_mean": "mean token position at which a refusal starts in the reply",
    "sarr": "SafeEraser's safe answer refusal rate: refusals of benign requests about a harmful object (lower is "
    "better)",
    "people_accuracy": "share of known people facts answered with the right value (utility; higher is better)",
    "utility_vs_target": "people_accuracy relative to the unaligned target's",
    "uncertain_rate_unknown": "share of replies expressing uncertainty on questions about never-seen people",
    "uncertain_rate_known": "share of replies expressing uncertainty on questions the model knows",
    "relearn_recovered": "relearning attack: held-out forget-value ROUGE gained after fine-tuning on a few forget "
    "items (recovery beyond the oracle's = suppressed, not removed)",
    "model_utility_ratio": "model utility divided by the target's (1 = nothing else broke)",
    "ua": "unlearning accuracy: share of target-concept generations not classified as the concept (higher is better)",
    "ira": "in-domain retain accuracy: classifier accuracy on the erased factor's other values (higher is better)",
    "cra": "cross-domain retain accuracy: accuracy on the other factors (higher is better)",
    "over_erasure": "share of benign neighbour prompts whose generation no longer shows what they ask (lower is "
    "better)",
    "fd_classifier": "Frechet distance of the factor classifiers' features to the base model's images (not an "
    "Inception FID)",
    "pre_asr": "share of target-concept prompts that already show the concept before any attack",
    "asr*": "attack success rate: share of attacked prompts whose generation shows the erased concept again",
    "factor_accuracy*": "classifier accuracy of generations on one factor",
    "target_recognised": "share of target-concept generations classified as the concept",
}


def describe(name: str, registry: dict[str, str]) -> str | None:
    """One line defining metric `name`: the registry's description, else the glossary's, resolving the
    heldout_ prefix and the [source] / [attack] suffix."""
    if name in registry:
        return registry[name]
    core, note = name, ""
    if core.startswith("heldout_"):
        core, note = core[len("heldout_") :], " (on held-out objects never trained)"
    if "[" in core and core.endswith("]") and not core.startswith(("asr", "factor_accuracy")):
        core, src = core.split("[", 1)
        note += f" (prompts of {src[:-1]})"
    if core in registry:
        return registry[core] + note
    if core in GLOSSARY:
        return GLOSSARY[core] + note
    for key, text in GLOSSARY.items():
        if key.endswith("*") and core.startswith(key[:-1]):
            return text + note
    return None
