"""`obliviate report`: one self-contained HTML page from one or more run directories.

The page needs nothing beyond itself: CSS and JavaScript are inline, figures are inline SVG (figures.py), sample
grids are base64 PNGs, and the per-sample table's rows are an inline JSON block rendered by vanilla JS with
`textContent` (so no string from a data file is ever parsed as HTML). Every other data string is HTML-escaped.
Figures are computed from every sample; only the table is capped (`MAX_ROWS_PER_RUN`, long texts cut), which keeps
the report of a full demo at a few MB.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from html import escape
from pathlib import Path

from obliviate.core.errors import UsageError
from obliviate.report.headline import fmt as _fmt
from obliviate.report.headline import headline_tables
from obliviate.report.sections import Figure, Source, figures
from obliviate.report.validate import check_document, check_guard, check_sample

RESULT_FILES = ("results.json", "leaderboard.json", "audit.json", "calibration.json", "sweep.json", "muse.json")
MAX_ROWS_PER_RUN = 500  # table rows per (source, run), spread evenly over the run's rows
MAX_ROWS = 8000  # table rows in all; the per-run cap shrinks when many runs share the page
MAX_TEXT = 400  # characters of one table cell; the full text is in samples.jsonl
MAX_SAMPLE_LINES = 500_000  # lines read from one samples.jsonl (figures use every line read)
MAX_CONFIG_CHARS = 20_000
FILTER_MAX_VALUES = 30  # a column gets a value dropdown when it has at most this many distinct values
FIRST_COLUMNS = (
    "source",
    "run",
    "split",
    "kind",
    "set",
    "category",
    "id",
    "question",
    "prompt",
    "answer",
    "generated",
    "output",
    "value",
    "value_hit",
    "refused",
)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise UsageError(f"{path} is not valid JSON: nested too deeply") from None
    except ValueError as e:  # malformed JSON, not UTF-8, an integer of more than 4300 digits
        raise UsageError(f"{path} is not valid JSON: {str(e).split(';')[0]}") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


def load_source(path: Path, name: str) -> Source:
    """A run directory's results files; UsageError when it holds none."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path} is not a directory")
    found = [f for f in RESULT_FILES if (path / f).is_file()]
    if not found:
        raise UsageError(f"{path} holds no results files ({', '.join(RESULT_FILES)})")
    docs = {f: check_document(_read_json(path / f), path / f) for f in found}
    s = Source(
        name,
        path,
        results=docs.get("results.json") or docs.get("muse.json"),
        leaderboard=docs.get("leaderboard.json"),
        audit=docs.get("audit.json"),
        calibration=docs.get("calibration.json"),
        sweep=docs.get("sweep.json"),
    )
    if s.results is not None and not isinstance(s.results.get("results", {}), dict):
        raise UsageError(f"{path}/results.json: 'results' is not an object of runs")
    if (path / "samples.jsonl").is_file():
        s.samples, s.samples_total = _read_samples(path / "samples.jsonl")
    s.grids = sorted((path / "grids").glob("*.png")) if (path / "grids").is_dir() else []
    for g in sorted((path / "guards").glob("*/guard.json")) if (path / "guards").is_dir() else []:
        if g.stat().st_size < 20_000_000:
            doc = _read_json(g)
            check_guard(doc, g)
            report = doc.get("report")
            if isinstance(report, dict):
                s.guards[g.parent.name] = report
    cfg_guards = ((s.results or {}).get("config") or {}).get("runs", {})
    if isinstance(cfg_guards, dict) and isinstance(cfg_guards.get("guards"), dict):
        s.guards |= {k: v for k, v in cfg_guards["guards"].items() if isinstance(v, dict)}
    return s


def _read_samples(path: Path) -> tuple[list[dict], int]:
    rows, total = [], 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            total += 1
            if len(rows) >= MAX_SAMPLE_LINES:
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                raise UsageError(f"{path}:{i} is not a JSON line") from None
            check_sample(row, path, i)
            if isinstance(row, dict):
                rows.append(row)
    return rows, total


def _names(paths: list[Path]) -> list[str]:
    """Short unique labels: the directory names, with their parent where two collide."""
    names = [p.resolve().name or str(p) for p in paths]
    for n in list(names):
        if names.count(n) > 1:
            names = [f"{p.resolve().parent.name}/{m}" if m == n else m for p, m in zip(paths, names)]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def write_report(sources: list[Path], out: Path) -> dict:
    """Write the page to `out` atomically; returns {"bytes", "figures", "rows", "rows_total"}."""
    if not sources:
        raise UsageError("give at least one run directory")
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name such as {out / 'report.html'}")
    loaded = [load_source(Path(p), n) for p, n in zip(sources, _names([Path(p) for p in sources]))]
    for s in loaded:
        s.report_dir = out.parent
    figs = figures(loaded)
    table, kept, total = _sample_table(loaded)
    page = _page(loaded, figs, table, kept, total)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the report from a reviewer's web server
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"bytes": len(page.encode("utf-8")), "figures": [f.id for f in figs], "rows": kept, "rows_total": total}


def write_beside(out: Path) -> None:
    """`demo`, `bench`, `audit`, `refusal-eval`: OUT/report.html beside their JSON. A failed report only warns
    (one line on stderr): the command's results are already written and stay valid."""
    try:
        write_report([Path(out)], Path(out) / "report.html")
        print(f"wrote {Path(out) / 'report.html'}")
    except Exception as e:  # noqa: BLE001 - whatever breaks the report must not fail the command
        print(f"warning: no report.html written: {' '.join(str(e).split())[:300] or type(e).__name__}", file=sys.stderr)


# --- the per-sample table ----------------------------------------------------------------------------------------


def _cell(v):
    """A JSON-safe, compact table value: numbers stay numbers (sorting), lists become short text."""
    if isinstance(v, bool) or v is None:
        return None if v is None else str(v).lower()
    if isinstance(v, (int, float)):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        v = ", ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in v)
    elif isinstance(v, dict):
        v = json.dumps(v, sort_keys=True)
    v = str(v)
    return v if len(v) <= MAX_TEXT else v[:MAX_TEXT] + " …"


def _spread(rows: list[dict], cap: int) -> list[int]:
    """At most `cap` row indices, in file order: each (split, kind, set) group keeps its share of the cap (at least
    one row), evenly spaced within the group, so no split or kind drops out of view."""
    if len(rows) <= cap:
        return list(range(len(rows)))
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r.get("split"), r.get("kind"), r.get("set")), []).append(i)
    picked = []
    for idx in groups.values():
        n = max(1, cap * len(idx) // len(rows))
        picked += [idx[int(j * len(idx) / n)] for j in range(min(n, len(idx)))]
    return sorted(picked)[:cap]  # more groups than the cap: the first rows in file order


def _sample_table(sources: list[Source]) -> tuple[dict, int, int]:
    many = len(sources) > 1
    by_run: dict[tuple[str, str], list[dict]] = {}
    for s in sources:
        for r in s.samples:
            by_run.setdefault((s.name, str(r.get("run"))), []).append(r)
    total = sum(s.samples_total for s in sources)
    cap = max(50, min(MAX_ROWS_PER_RUN, MAX_ROWS // max(1, len(by_run))))
    chosen = []
    for (src, _), rows in by_run.items():
        chosen += [({"source": src} if many else {}) | rows[i] for i in _spread(rows, cap)]
    keys = list(dict.fromkeys(k for r in chosen for k in r))
    columns = [k for k in FIRST_COLUMNS if k in keys] + [k for k in keys if k not in FIRST_COLUMNS]
    rows = [[_cell(r.get(k)) for k in columns] for r in chosen]
    filters = {}
    for i, c in enumerate(columns):
        values = {row[i] for row in rows if row[i] is not None}
        # categorical columns only: few values, not measurements, and short (a dropdown of answers helps no one)
        if (
            1 < len(values) <= FILTER_MAX_VALUES
            and not all(isinstance(v, float) for v in values)
            and max(len(str(v)) for v in values) <= 40
        ):
            filters[c] = sorted(values, key=lambda v: (isinstance(v, str), v if isinstance(v, str) else float(v)))
    return {"columns": columns, "rows": rows, "filters": filters}, len(rows), total


def _json_script(obj) -> str:
    """JSON for a <script type="application/json"> block: `<`, `>` and `&` escaped, so no data string can close
    the block or open a comment."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


# --- the page ------------------------------------------------------------------------------------------------------


def _descriptions() -> dict[str, str]:
    from obliviate.metrics import METRICS

    return {name: m.description for name, m in METRICS.items()}


def _definitions(metrics: list[str], registry: dict) -> str:
    from obliviate.report.figures import describe

    merged: dict[str, list[str]] = {}  # metrics sharing one definition (refusal_rate@prefill5, 10, ...) share a line
    for m in dict.fromkeys(metrics):
        merged.setdefault(describe(m, registry) or "no definition recorded", []).append(m)
    return "".join(f"<dt>{escape(', '.join(ms))}</dt><dd>{escape(d)}</dd>" for d, ms in merged.items())


def _small_table(rows: list[list]) -> str:
    head, *body = rows
    cell = lambda v: f"<td{' class=t' if isinstance(v, str) else ''}>{_fmt(v)}</td>"  # text left, numbers right
    return (
        '<div class="scroll"><table class="num"><thead><tr>'
        + "".join(f"<th>{escape(str(h))}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join("<tr>" + "".join(map(cell, r)) + "</tr>" for r in body)
        + "</tbody></table></div>"
    )


def _results_table(s: Source, registry: dict) -> str:
    """Each wing's runs in a table of their own, headline figures first (`headline.headline_tables`); bench: one row
    per method@split@seed."""
    return headline_tables(s.results or s.leaderboard or {}, registry)


def _provenance(s: Source) -> str:
    docs = [d for d in (s.results, s.leaderboard, s.audit) if d]
    doc = docs[0] if docs else {}
    rows = [
        ("directory", str(s.path)),
        (
            "files",
            ", ".join(f for f in RESULT_FILES if (s.path / f).is_file())
            + (", samples.jsonl" if s.samples_total else ""),
        ),
        ("created", doc.get("created")),
        ("obliviate", doc.get("obliviate_version")),
        ("git commit", doc.get("git") or "not recorded"),
        ("versions", ", ".join(f"{k} {v}" for k, v in (doc.get("versions") or {}).items())),
        ("wall seconds", doc.get("wall_seconds")),
    ]
    # files without a "config" (calibration, sweep, a diffusion audit) are their own settings: show the scalars
    plain = {k: v for k, v in (doc or s.calibration or s.sweep or {}).items() if not isinstance(v, (list, dict))}
    cfg = json.dumps(doc["config"] if "config" in doc else plain, indent=1, default=str)
    cut = len(cfg) > MAX_CONFIG_CHARS
    cfg = cfg[:MAX_CONFIG_CHARS] + (
        f"\n… ({len(cfg) - MAX_CONFIG_CHARS} more characters in the results file)" if cut else ""
    )
    return (
        "<table class=kv>"
        + "".join(f"<tr><th>{k}</th><td>{_fmt(v)}</td></tr>" for k, v in rows if v not in (None, ""))
        + f"</table><details><summary>config</summary><pre>{escape(cfg)}</pre></details>"
    )


def _figure_html(f: Figure, registry: dict) -> str:
    defs = f"<dl class=defs>{_definitions(f.metrics, registry)}</dl>" if f.metrics else ""
    table = (
        f"<details><summary>the numbers ({len(f.table) - 1} rows)</summary>{_small_table(f.table)}</details>"
        if f.table
        else ""
    )
    return (
        f'<section id="{f.id}"><h2>{escape(f.title)}</h2><figure class="fig" data-figure="{f.id}">'
        f'<div class="plot">{f.body}</div><figcaption>{escape(f.caption)}</figcaption></figure>'
        f"{defs}{table}</section>"
    )


def _page(sources: list[Source], figs: list[Figure], table: dict, kept: int, total: int) -> str:
    registry = _descriptions()
    title = "obliviate report: " + ", ".join(s.name for s in sources)
    nav = [("runs", "Runs"), *[(f.id, f.title) for f in figs]] + ([("samples", "Samples")] if table["rows"] else [])
    # each run directory: its headline tables first, its provenance below them
    runs = "".join(f"<h3>{escape(s.name)}</h3>{_results_table(s, registry)}{_provenance(s)}" for s in sources)
    samples = ""
    if table["rows"]:
        cut = (
            (
                f" The table shows {kept:,} of {total:,} rows (up to {MAX_ROWS_PER_RUN} per run, evenly spaced; cells "
                f"cut at {MAX_TEXT} characters); the figures use every row."
            )
            if kept < total
            else ""
        )
        samples = (
            f'<section id="samples"><h2>Samples</h2><p class=note>Search matches any cell; the dropdowns keep '
            f"one value of a column; click a column name to sort. To find forget items that still leak: split "
            f"= forget, value_hit = true, then sort by truth_ratio or gt_loss.{escape(cut)}</p>"
            '<div class=controls><input id="q" type="search" placeholder="search samples…" '
            'aria-label="search">'
            '<span id="filters"></span><span id="count"></span></div><div class="scroll tall">'
            '<table id="samples-table"><thead></thead><tbody></tbody></table></div>'
            '<button id="more" hidden>show more rows</button>'
            f'<script type="application/json" id="samples-data">{_json_script(table)}</script></section>'
        )
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><header><h1>{escape(title)}</h1>"
        f"<nav>{' · '.join(f'<a href=#{i}>{escape(t)}</a>' for i, t in nav)}</nav></header><main>"
        f'<section id="runs"><h2>Runs: results and provenance</h2>{runs}</section>'
        f"{''.join(_figure_html(f, registry) for f in figs)}{samples}</main><script>{JS}</script></body></html>"
    )


CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#20304a;color:#fff;padding:14px 24px}header h1{font-size:20px;margin:0 0 6px}
nav a{color:#cfe0ff;font-size:13px}main{padding:8px 24px 40px;max-width:1500px}
section{background:#fff;border:1px solid #e2e2e2;border-radius:6px;padding:8px 16px 14px;margin:16px 0}
h2{font-size:17px;margin:8px 0}h3{font-size:15px;margin:14px 0 6px}.note,figcaption{color:#555;font-size:13px}
.plot svg{max-width:100%;height:auto}.plot{overflow-x:auto}.grid{display:inline-block;margin:6px;font-size:12px}
.grid img{image-rendering:pixelated;max-width:100%;border:1px solid #ddd}
.findings img{image-rendering:pixelated;height:64px}.findings td{font-size:12px;padding:2px 6px;vertical-align:middle}
dl.defs{display:grid;grid-template-columns:fit-content(30em) 1fr;gap:2px 12px;font-size:13px;margin:8px 0}
dl.defs dt{font-family:ui-monospace,monospace;font-weight:600;overflow-wrap:anywhere}dl.defs dd{margin:0;color:#333}
.scroll{overflow:auto;max-width:100%}.tall{max-height:70vh}table{border-collapse:collapse;font-size:12.5px}
th,td{border-bottom:1px solid #eee;padding:3px 7px;text-align:left;vertical-align:top}
table.num td{text-align:right;font-variant-numeric:tabular-nums}table.num td.t{text-align:left}
table.kv th{color:#555;font-weight:500}h4{font-size:14px;margin:12px 0 4px}
table.results th.head{background:#e3ebf7}table.results td{white-space:nowrap}.ci{color:#555;font-size:11.5px}.n{color:#888;font-size:11px}
thead th{position:sticky;top:0;background:#f0f3f8;cursor:default;white-space:nowrap}
#samples-table thead th{cursor:pointer;user-select:none}#samples-table td{max-width:28em}
#samples-table td.t{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}#samples-table td.open{white-space:normal}
#samples-table td.n{text-align:right;font-variant-numeric:tabular-nums}
.controls{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:8px 0}
.controls input{padding:4px 8px;min-width:18em}.controls select{max-width:14em}#count{color:#555;font-size:13px}
pre{background:#f6f6f6;padding:8px;max-height:24em;overflow:auto;font-size:12px}button{margin-top:8px}
"""

# The table: rows are arrays from the JSON block; cells are set with textContent only.
JS = r"""
(function(){
const el=document.getElementById('samples-data'); if(!el) return;
const D=JSON.parse(el.textContent), C=D.columns, R=D.rows, tb=document.querySelector('#samples-table tbody');
const num=C.map((_,i)=>R.some(r=>typeof r[i]==='number'));
const text=R.map(r=>r.map(v=>v===null?'':String(v)).join('\u0001').toLowerCase());
let q='', sel={}, sortCol=-1, dir=1, limit=300;
const head=document.querySelector('#samples-table thead'), tr=document.createElement('tr');
C.forEach((c,i)=>{const th=document.createElement('th'); th.textContent=c; th.dataset.col=i;
  th.title='click to sort'; th.addEventListener('click',()=>{dir=(sortCol===i)?-dir:1; sortCol=i; render();});
  tr.appendChild(th);}); head.appendChild(tr);
const fl=document.getElementById('filters');
Object.entries(D.filters).forEach(([c,vals])=>{const i=C.indexOf(c), s=document.createElement('select');
  s.dataset.col=c; s.setAttribute('aria-label','filter '+c);
  const all=document.createElement('option'); all.value=''; all.textContent=c+': all'; s.appendChild(all);
  vals.forEach(v=>{const o=document.createElement('option'); o.value=String(v); o.textContent=c+' = '+v;
    s.appendChild(o);});
  s.addEventListener('change',()=>{if(s.value==='') delete sel[i]; else sel[i]=s.value; limit=300; render();});
  fl.appendChild(s);});
document.getElementById('q').addEventListener('input',e=>{q=e.target.value.trim().toLowerCase(); limit=300; render();});
document.getElementById('more').addEventListener('click',()=>{limit+=1000; render();});
function fmt(v){if(v===null) return ''; if(typeof v!=='number'||Number.isInteger(v)) return String(v);
  return Math.abs(v)<1e-3&&v!==0?v.toExponential(2):v.toFixed(4);}
function cmp(a,b){if(a===b) return 0; if(a===null) return 1; if(b===null) return -1;
  if(typeof a==='number'&&typeof b==='number') return (a-b)*dir; return String(a).localeCompare(String(b))*dir;}
function render(){
  let idx=[]; for(let k=0;k<R.length;k++){ if(q&&text[k].indexOf(q)<0) continue;
    let ok=true; for(const i in sel){ if(String(R[k][i])!==sel[i]){ok=false;break;} } if(ok) idx.push(k); }
  if(sortCol>=0) idx.sort((a,b)=>cmp(R[a][sortCol],R[b][sortCol]));
  head.querySelectorAll('th').forEach((th,i)=>{th.textContent=C[i]+(i===sortCol?(dir>0?' ▲':' ▼'):'');
    th.setAttribute('aria-sort',i===sortCol?(dir>0?'ascending':'descending'):'none');});
  const frag=document.createDocumentFragment();
  idx.slice(0,limit).forEach(k=>{const row=document.createElement('tr'); R[k].forEach((v,i)=>{
    const td=document.createElement('td'); td.textContent=fmt(v); td.className=num[i]?'n':'t';
    if(!num[i]&&v!==null&&String(v).length>40){  // long text: full text on hover, click to unfold
      td.title=String(v); td.addEventListener('click',()=>td.classList.toggle('open'));}
    row.appendChild(td);}); frag.appendChild(row);});
  tb.replaceChildren(frag);
  document.getElementById('count').textContent=idx.length+' of '+R.length+' rows match'
    +(idx.length>limit?' (showing '+limit+')':'');
  document.getElementById('more').hidden=idx.length<=limit;
}
render();
})();
"""
