"""The text-to-image wing's figures: erasure bars per concept, the safety-utility trade-off (UA against
over-erasure per category of look-alike prompt, as OVERT plots over-refusal against safety), what the attacks
found beside the images it gave, and the sample grids.

`diffusion_figures(sources, many)` returns figure dicts (id, title, body, caption, metrics) for `sections.Figure`;
a source reads as a duck-typed `sections.Source` (name, path, results, audit, grids).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from obliviate.report import figures as F
from obliviate.report.headline import num as _num
from obliviate.report.headline import runs_of as _runs

DIFFUSION_METRICS = ("ua", "ira", "cra", "over_erasure", "pre_asr")
MAX_GRID_BYTES = 2_500_000  # embedded PNGs (grids and findings), all sources together (the page stays under 5 MB)
MAX_FINDINGS = 48  # findings rows shown per attack
MARKERS = {"look-alike": "o", "word-alike": "s"}


def diffusion_figures(sources, many: bool) -> list[dict]:
    budget = [MAX_GRID_BYTES]
    return [
        *_erasure(sources, many),
        *_tradeoff(sources, many),
        *_findings(sources, many, budget),
        *_grids(sources, many, budget),
    ]


def _esc(s) -> str:
    return html.escape(str(s), quote=True)


def _png(path: Path, budget: list[int]) -> str | None:
    """An inline <img> of a PNG, or None when it would pass the page's image budget."""
    data = path.read_bytes()
    if len(data) > budget[0]:
        return None
    budget[0] -= len(data)
    return f'<img alt="{_esc(path.stem)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _erasure(sources, many) -> list[dict]:
    panels, used = [], []
    for s in sources:
        runs = {r: m for r, m in _runs(s).items() if _num(m.get("ua"))}
        by_concept: dict[str, list[str]] = {}
        for r in runs:
            by_concept.setdefault(r.split("/")[-1] if "/" in r else "", []).append(r)
        for concept, names in by_concept.items():
            keys = [k for k in DIFFUSION_METRICS if any(_num(runs[r].get(k)) for r in names)]
            used += keys
            panels.append(
                (
                    (f"{s.name}: " if many else "") + (f"concept '{concept}'" if concept else "erasure"),
                    [r.split("/")[0] for r in names],
                    {k: [runs[r].get(k) if _num(runs[r].get(k)) else None for r in names] for k in keys},
                )
            )
        aud = (s.results or {}).get("audit") or {}
        asr = {r: a["attacks"] for r, a in aud.items() if isinstance(a, dict) and isinstance(a.get("attacks"), dict)}
        if asr:
            attacks = list(dict.fromkeys(k for v in asr.values() for k in v))
            panels.append(
                (
                    f"attacks ({s.name})" if many else "attacks on the erasures",
                    list(asr),
                    {a: [v.get(a, {}).get("asr") for v in asr.values()] for a in attacks},
                )
            )
            used.append("asr")
    if not panels:
        return []
    return [
        {
            "id": "diffusion",
            "title": "Concept erasure (text-to-image)",
            "body": F.bar_panels(panels),
            "caption": "Per eraser and concept, from the factor classifiers' reading of generated images.",
            "metrics": list(dict.fromkeys(used)),
        }
    ]


def _tradeoff(sources, many) -> list[dict]:
    """UA (x) against over-erasure per category (y), one point per (eraser, concept) and category."""
    points = []  # (label, category, ua, rate)
    for s in sources:
        for run, m in _runs(s).items():
            for key, v in m.items():
                if key.startswith("over_erasure[") and _num(v) and _num(m.get("ua")):
                    points.append(((f"{s.name}: " if many else "") + run, key[len("over_erasure[") : -1], m["ua"], v))
    if not points:
        return []
    fig, (ax,) = F._figure(1, 7.5, 5.0)
    for cat in dict.fromkeys(p[1] for p in points):
        mine = [p for p in points if p[1] == cat]
        ax.scatter([p[2] for p in mine], [p[3] for p in mine], marker=MARKERS.get(cat, "^"), s=40, label=cat)
        for label, _, x, y in mine:
            ax.annotate(F._text(label), (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xlim(-0.05, 1.05), ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("unlearning accuracy (UA: the concept is gone)")
    ax.set_ylabel("over-erasure rate (benign prompts spoiled)")
    ax.set_title("safety vs over-erasure, per category of look-alike prompt", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [
        {
            "id": "diffusion-tradeoff",
            "title": "Erasure against over-erasure (OVERT-style)",
            "body": F.to_svg(fig),
            "caption": "Each point is an eraser on a concept: right is the concept erased, down is benign prompts "
            "kept. Look-alike prompts swap the concept for the values most alike in appearance, word-alike ones for "
            "the least alike (only the other words are shared).",
            "metrics": ["ua", "over_erasure"],
        }
    ]


def _audits(s) -> list[tuple[str, dict]]:
    """(label, audit document) of a source: its audit.json, or its demo's per-run audits."""
    out = []
    if isinstance(s.audit, dict) and "pre_asr" in s.audit:
        out.append(("", s.audit))
    for run, a in ((s.results or {}).get("audit") or {}).items():
        if isinstance(a, dict) and isinstance(a.get("attacks"), dict):
            out.append((run, a))
    return out


def _findings(sources, many, budget: list[int]) -> list[dict]:
    rows, left = [], 0
    for s in sources:
        for run, doc in _audits(s):
            for attack, fig in doc["attacks"].items():
                rel = fig.get("findings") if isinstance(fig, dict) else None
                f = Path(s.path) / rel / "findings.jsonl" if isinstance(rel, str) else None
                if f is None or not f.is_file() or f.stat().st_size > 5_000_000:
                    continue
                recs = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
                for r in recs[:MAX_FINDINGS]:
                    img = _png(f.parent / r["image"], budget) if r.get("image") else None
                    left += bool(r.get("image")) and img is None
                    found = r.get("found_prompt") or (
                        " + ".join(f"{w:+g} x '{p}'" for p, w in r["terms"]) if r.get("terms") else None
                    )
                    found = found or (f"text-embedding context ({r['context']})" if r.get("context") else "")
                    where = " / ".join(x for x in ((s.name if many else ""), run, attack) if x)
                    rows.append(
                        f"<tr><td>{_esc(where)}</td><td>{_esc(r.get('prompt', ''))}</td><td>{_esc(found)}</td>"
                        f"<td>{'yes' if r.get('success') else 'no'}{'' if r.get('attacked', True) else ' (plain)'}"
                        f"</td><td>{img or ''}</td></tr>"
                    )
    if not rows:
        return []
    table = (
        '<table class="findings"><thead><tr><th>audit / attack</th><th>prompt</th><th>what the attack found</th>'
        "<th>concept shown</th><th>image</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    return [
        {
            "id": "diffusion-findings",
            "title": "What the attacks found",
            "body": table,
            "caption": "Each attacked prompt with the adversarial prompt, embedding or composition the attack found, "
            "and the erased model's image with it; '(plain)' marks prompts whose plain generation already showed the "
            "concept (counted, not attacked). `obliviate audit --replay DIR` runs these on another model."
            + (f" {left} images left out to keep the page small." if left else ""),
            "metrics": ["asr"],
        }
    ]


def _grids(sources, many, budget: list[int]) -> list[dict]:
    imgs, left = [], []
    for s in sources:
        for p in s.grids:
            img = _png(p, budget)
            if img is None:
                left.append(p.name)
                continue
            imgs.append(
                f'<div class="grid">{img}<div>{_esc((s.name + ": ") if many else "")}{_esc(p.stem)}</div></div>'
            )
    if not imgs:
        return []
    return [
        {
            "id": "grids",
            "title": "Sample grids",
            "body": "".join(imgs),
            "caption": "Generated images, one row per model state (first row before erasure, second after)."
            + (f" Left out to keep the page small: {', '.join(left)}." if left else ""),
        }
    ]
