"""The audit's prompt-search attacks in the report: attack success rate against budget, and the prompts found.

A search attack (GCG, random search, PAIR/TAP, Best-of-N, many-shot, ...) reports in audit.json, per role, the
share of behaviours broken within each budget it checked: `asr@{budget name}{b}` (`asr@step10`, `asr@n16`). With a
guard, the guarded model's own search through the guard is `adaptive_asr@...`, and the findings of the bare model
(role `unguarded`) sent through the guard give one number, `transfer_asr`, drawn as a dotted level.

One figure per attack: x the budget, y the ASR, one line per role. Under it, per role, links to the attack's files
(artifacts/ATTACK/ROLE/findings.jsonl and steps.jsonl, relative to the page's folder) and a collapsible table of
each finding: request, found prompt, success and reply. Findings are model output: every string is HTML-escaped
and cut (the file holds the whole text); the page fetches nothing.

`curve_figures` returns plain dicts with the fields of `sections.Figure`, which wraps them (sections imports this
module, not the reverse).
"""

from __future__ import annotations

import json
import math
import os
import re
from html import escape
from pathlib import Path
from urllib.parse import quote

from obliviate.report import figures as F

CURVE_KEY = re.compile(r"(adaptive_)?asr@([A-Za-z_]+)(\d+(?:\.\d+)?)")
ROLES = ("unguarded", "model", "oracle", "target")
MARKERS = {"unguarded": "D", "model": "o", "oracle": "s", "target": "^"}
COLORS = {"unguarded": "#ff7f0e", "model": "#1f77b4", "oracle": F.ORACLE_COLOR, "target": F.TARGET_COLOR}
FILES = {  # a role's findings files, as `audit.attacks.adversarial` writes them, and what each holds
    "findings.jsonl": "prompts found by the search",
    "transfer_findings.jsonl": "the unguarded model's findings sent through the guard",
    "replay_findings.jsonl": "an earlier audit's findings replayed",
}
MAX_ROWS = 50  # findings listed per file (the link gives all of them)
MAX_TEXT = 400  # characters of one listed text: its head and tail, the middle cut
MAX_LISTED_CHARS = 1_500_000  # listed text on the whole page; beyond it, links only (the page stays small)
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # an attack or role name that may name a folder


def is_curve_key(key: str) -> bool:
    """Whether a figure is a point of an ASR-versus-budget curve (drawn here, kept out of the audit's bars)."""
    return CURVE_KEY.fullmatch(key) is not None


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def series(entry: dict) -> dict[str, list[tuple[str, str, list[tuple[float, float]]]]]:
    """{budget name: [(role, label, [(budget, asr)] in budget order)]} from one attack's audit.json entry."""
    out: dict[str, list] = {}
    for role in ROLES:
        figs = entry.get(role)
        if not isinstance(figs, dict):
            continue
        groups: dict[tuple[str, bool], list[tuple[float, float]]] = {}
        for key, v in figs.items():
            m = CURVE_KEY.fullmatch(key)
            if m and _num(v) and math.isfinite(float(m.group(3))):
                groups.setdefault((m.group(2), bool(m.group(1))), []).append((float(m.group(3)), float(v)))
        for (budget, adaptive), pts in groups.items():
            label = f"{role} (searched through the guard)" if adaptive else role
            out.setdefault(budget, []).append((role, label, sorted(pts)))
    return out


def transfers(entry: dict) -> dict[str, float]:
    """{role: transfer_asr}: the bare model's findings sent through the guard (one number, no curve)."""
    return {
        r: float(entry[r]["transfer_asr"])
        for r in ROLES
        if isinstance(entry.get(r), dict) and _num(entry[r].get("transfer_asr"))
    }


def _figs(entry: dict, role: str) -> dict:
    return entry[role] if isinstance(entry.get(role), dict) else {}


def _b(x: float):
    return int(x) if float(x).is_integer() else x


def draw(panels: dict[str, list], levels: dict[str, float]) -> str:
    """One panel per budget name: a line per series, a dotted level per transfer ASR."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = F._figure(len(panels), 6.4, 4.0, cols=2)
    for ax, (budget, lines) in zip(axes, panels.items()):
        xs = sorted({x for _, _, pts in lines for x, _ in pts})
        for role, label, pts in lines:
            # ASR within a budget only grows, and stays at its last value once every search stopped: a step
            # line held to the panel's largest budget, with markers at the measured points only
            ax.plot(
                [x for x, _ in pts] + [xs[-1]],
                [y for _, y in pts] + [pts[-1][1]],
                drawstyle="steps-post",
                marker=MARKERS.get(role, "o"),
                markevery=list(range(len(pts))),
                ms=4 if role in ("model", "unguarded") else 7,
                mfc=None if role in ("model", "unguarded") else "none",  # hollow: a point under it stays visible
                color=COLORS.get(role, "#7f7f7f"),
                ls="--" if label != role else "-",
                label=F._text(label),
            )
        for role, v in levels.items():
            ax.axhline(v, color=COLORS.get(role, "#7f7f7f"), ls=":", lw=1.4, label=F._text(f"{role}: transferred"))
        if xs and xs[0] > 0 and xs[-1] / xs[0] >= 50:
            ax.set_xscale("log")
        else:
            ax.set_xlim(0, xs[-1] * 1.05 if xs and xs[-1] > 0 else 1)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(F._text(f"budget ({budget})"))
        ax.set_ylabel("attack success rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return F.to_svg(fig)


def _cut(v, n: int = MAX_TEXT) -> str:
    s = "" if v is None else v if isinstance(v, str) else json.dumps(v)
    return s if len(s) <= n else f"{s[: n // 2]} … [{len(s) - n} characters cut] … {s[-n // 2 :]}"


def _read(path: Path) -> tuple[list[dict], int, int, int]:
    """(the first MAX_ROWS records, records in all, successes in all, lines that are not a JSON object)."""
    rows, total, wins, bad = [], 0, 0, 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                rec = None
            if not isinstance(rec, dict):
                bad += 1
                continue
            total += 1
            wins += rec.get("success") is True
            if len(rows) < MAX_ROWS:
                rows.append(rec)
    return rows, total, wins, bad


def _href(path: Path, base: Path) -> str:
    return quote(Path(os.path.relpath(path.resolve(), base.resolve())).as_posix(), safe="/")


def _listing(rows: list[dict]) -> str:
    cells = []
    for r in rows:
        ok = r.get("success")
        cells.append(
            "<tr>"
            f"<td class=t>{escape(_cut(str(r.get('id', ''))))}</td>"
            f"<td class=t>{'yes' if ok is True else 'no' if ok is False else escape(_cut(str(ok)))}</td>"
            + "".join(
                f'<td class=t style="white-space:pre-wrap;min-width:14em;max-width:40em">'
                f"{escape(_cut(r.get(k, '')))}</td>"
                for k in ("request", "adversarial", "reply")
            )
            + f"<td>{escape(str(_b(r['queries']))) if _num(r.get('queries')) else '–'}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("id", "success", "request", "found prompt", "reply", "queries"))
    body = "".join(cells)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def findings_html(root: Path, attack: str, base: Path, budget: list[int]) -> str:
    """Per role: links to the attack's files and a collapsible listing of its findings ('' when it has none).
    `budget` holds the characters the page may still list (shared by every attack of the page)."""
    if not SAFE_NAME.fullmatch(attack):
        return ""
    parts = []
    for role in ROLES:
        d = root / "artifacts" / attack / role
        if not d.is_dir():
            continue
        links = [
            f'<a href="{_href(d / name, base)}">{escape(name)}</a> ({escape(what)})'
            for name, what in {**FILES, "steps.jsonl": "the objective at every step"}.items()
            if (d / name).is_file()
        ]
        if not links:
            continue
        parts.append(f"<p class=note><b>{escape(role)}</b>: {'; '.join(links)}</p>")
        for name, what in FILES.items():
            if not (d / name).is_file():
                continue
            rows, total, wins, bad = _read(d / name)
            listing = _listing(rows) if rows else ""
            if len(listing) > budget[0]:
                listing = "<p class=note>Not listed, to keep the page small: open the file.</p>"
            budget[0] -= len(listing)
            note = f" (the first {len(rows)} shown)" if total > len(rows) else ""
            note += f"; {bad} unreadable lines skipped" if bad else ""
            parts.append(
                f"<details><summary>{escape(role)}: {escape(what)}: {wins} of {total} successful{escape(note)}"
                f"</summary>{listing}</details>"
            )
    return "".join(parts)


def _explain(n) -> str:
    return (f"{_b(n)} behaviours. " if n is not None else "") + (
        "Share of the behaviours broken within each budget: a behaviour counts at budget b once the search has "
        "succeeded by b. One line per model: the audited model (blue), the oracle (black), the target (red); with "
        "a guard, the bare model (orange, 'unguarded'), the guarded model searched through its guard (dashed) and "
        "the bare model's findings sent through the guard (dotted)."
    )


def curve_figures(sources, many: bool) -> list[dict]:
    """One figure (the fields of `sections.Figure`) per attack with an ASR-versus-budget curve, per source."""
    out, ids, budget = [], set(), [MAX_LISTED_CHARS]
    for s in sources:
        attacks = (s.audit or {}).get("attacks") or {}
        if not isinstance(attacks, dict) or "pre_asr" in (s.audit or {}):
            continue
        base = getattr(s, "report_dir", None) or s.path
        for name, entry in attacks.items():
            if not isinstance(entry, dict):
                continue
            panels, levels = series(entry), transfers(entry)
            if not panels:
                continue
            slug = f"curve-{re.sub(r'[^a-z0-9]+', '-', str(name).lower()).strip('-') or 'attack'}"
            fid = slug if slug not in ids else f"{slug}-{len(ids)}"
            ids.add(fid)
            labels = list(dict.fromkeys(label for lines in panels.values() for _, label, _ in lines))
            table = [["budget", "b", *labels, *(f"{r}: transferred" for r in levels)]]
            for b_name, lines in panels.items():
                at = {label: dict(pts) for _, label, pts in lines}
                for x in sorted({x for _, _, pts in lines for x, _ in pts}):
                    table.append([b_name, _b(x), *(at.get(lb, {}).get(x) for lb in labels), *levels.values()])
            n = next((entry[r]["behaviours"] for r in ROLES if _num(_figs(entry, r).get("behaviours"))), None)
            secs = entry.get("seconds")
            found = findings_html(Path(s.path), str(name), Path(base), budget)
            out.append(
                {
                    "id": fid,
                    "title": f"{name}: attack success rate against budget"
                    + (f" ({s.name})" if many else "")
                    + (f", {secs} s" if _num(secs) else ""),
                    "body": draw(panels, levels) + f"<p class=note>{escape(_explain(n))}</p>" + found,
                    "caption": (
                        "Each finding's request, found prompt, success and reply: open a model's listing above "
                        "(texts cut in the middle) or its findings.jsonl (whole texts)."
                        if found
                        else f"No findings beside this audit.json (artifacts/{name}/ROLE/findings.jsonl)."
                    )
                    + " The numbers below hold every measured point.",
                    "metrics": [],
                    "table": table,
                }
            )
    return out
