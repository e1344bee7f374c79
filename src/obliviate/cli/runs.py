"""`obliviate runs ls | show | compare | rm | doctor | rebuild`: the run registry (see `obliviate.runs`).

`--json` prints machine-readable output on stdout and nothing else. Reading commands never create a database:
on a missing one they show no runs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from obliviate.core.errors import UsageError

runs_app = typer.Typer(no_args_is_help=True, help="The run registry: every command with --out records its run here.")

REGISTRY_HELP = "database file (default: $OBLIVIATE_REGISTRY, else runs/registry.sqlite)"
HEADLINE = (
    "forget_quality",
    "model_utility",
    "privleak",
    "refusal_rate",
    "over_refusal_rate",
    "asr",
    "ua",
    "ira",
    "cra",
)


def sub_runs(metrics: dict) -> dict[str, dict]:
    """The runs inside one results file (target, oracle, each method...): name -> {metric: value}, from metric names
    "NAME/metric" where some NAME/metric is a headline metric (so "seconds/target" is not a run)."""
    names = {n.rsplit("/", 1)[0] for n in metrics if "/" in n and n.rsplit("/", 1)[1] in HEADLINE}
    return {
        name: {
            n[len(name) + 1 :]: v
            for n, v in metrics.items()
            if n.startswith(name + "/") and "/" not in n[len(name) + 1 :]
        }
        for name in sorted(names)
    }


def _open(registry: Optional[Path], create: bool = False):
    """The open run store, or None when it does not exist and `create` is False (reading commands)."""
    from obliviate.runs import RunStore, registry_path

    path = registry_path(registry)
    if path is None:
        raise UsageError("the run registry is off (OBLIVIATE_REGISTRY=off); choose one with --registry PATH")
    if not create and not path.exists():
        return None
    return RunStore(path)


def _echo_json(obj) -> None:
    import json

    typer.echo(json.dumps(obj, indent=2, default=str))


def _console():
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)  # piped output: wide rows, not folded ones


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def parse_since(text: str) -> str:
    """`2026-11-28`, an ISO date-time, or an age (`90m`, `12h`, `3d`, `2w`) -> an ISO UTC bound for `started`."""
    import re
    from datetime import datetime, timedelta, timezone

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*", text)
    try:
        if m:
            unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
            t = datetime.now(timezone.utc) - timedelta(**{unit: float(m.group(1))})
        else:
            try:
                t = datetime.fromisoformat(text.strip())
            except ValueError:
                raise UsageError(
                    f"--since expects a date (2026-11-28), a date-time or an age (90m, 12h, 3d, 2w), got {text!r}"
                ) from None
            t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    except OverflowError:  # an age or a time zone that reaches before year 1
        raise UsageError(
            f"--since {' '.join(text.split())}: before the year 1; give a later date or a shorter age"
        ) from None
    return t.isoformat(timespec="seconds")


def duration(run: dict) -> Optional[float]:
    from datetime import datetime

    try:
        return (datetime.fromisoformat(run["ended"]) - datetime.fromisoformat(run["started"])).total_seconds()
    except (TypeError, ValueError):
        return None


def _fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def headline(run: dict, metrics: dict) -> str:
    """Up to three well-known metrics; with several runs in one file, the run's method (else the only one)."""
    shown = []
    for h in HEADLINE:
        hits = [n for n in metrics if n == h or n.endswith("/" + h)]
        if len(hits) > 1 and run.get("method"):
            hits = [n for n in hits if n in (h, f"{run['method']}/{h}")]
        if len(hits) == 1:
            shown.append(f"{h} {_fmt(metrics[hits[0]])}")
        if len(shown) == 3:
            break
    return ", ".join(shown) or (f"{len(metrics)} metrics" if metrics else "")


@runs_app.command("ls")
def ls(
    suite: Optional[str] = typer.Option(None, help="exact, or a glob with * and ?"),
    method: Optional[str] = typer.Option(None, help="exact, or a glob with * and ?"),
    model: Optional[str] = typer.Option(None, help="exact, or a glob with * and ? (e.g. '*target*')"),
    since: Optional[str] = typer.Option(None, help="2026-11-28, an ISO date-time, or an age: 90m, 12h, 3d, 2w"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list of runs (with metrics)"),
    registry: Optional[Path] = typer.Option(None, "--registry", help=REGISTRY_HELP),
):
    """List runs, oldest first: id, status, command, suite, method, model, start, duration, headline metrics."""
    bound = parse_since(since) if since is not None else None
    reg = _open(registry)
    if reg is None:
        runs, metrics = [], {}
    else:
        with reg:
            runs = reg.runs(suite=suite, method=method, model=model, since=bound)
            metrics = reg.all_metrics()
    if as_json:
        _echo_json([run | {"duration_s": duration(run), "metrics": metrics.get(run["id"], {})} for run in runs])
        return
    if not runs:
        typer.echo("no runs" + ("" if reg is not None else " (the registry does not exist yet)"))
        return
    from rich.table import Table

    table = Table("id", "status", "command", "suite", "method", "model", "started", "duration", "metrics")
    for run in runs:
        m = metrics.get(run["id"], {})
        inner = sub_runs(m)
        table.add_row(
            run["id"],
            run["status"],
            run["command"],
            run["suite"] or "",
            run["method"] or "",
            run["model"] or "",
            (run["started"] or "")[:19].replace("T", " "),
            _fmt_duration(duration(run)),
            "" if len(inner) > 1 else headline(run, m),
        )
        if len(inner) > 1:  # a demo or an eval holds several runs (target, oracle, methods): one line each
            for name, figs in inner.items():
                table.add_row("", "", "", "", name, "", "", "", headline({}, figs))
    _console().print(table)


@runs_app.command("show")
def show(
    run_id: str = typer.Argument(..., help="a run id, or a unique prefix of one"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    registry: Optional[Path] = typer.Option(None, "--registry", help=REGISTRY_HELP),
):
    """Every field of one run, its metrics and its artifacts."""
    import json

    reg = _open(registry)
    if reg is None:
        raise UsageError(f"no run {run_id!r}: the run registry does not exist yet")
    with reg:
        run = reg.get(run_id)
    run["duration_s"] = duration(run)
    if as_json:
        _echo_json(run)
        return
    from rich.table import Table

    fields = Table("field", "value", show_header=False)
    for key, value in run.items():
        if key not in ("metrics", "artifacts"):
            fields.add_row(
                key, json.dumps(value) if isinstance(value, (list, dict)) else "-" if value is None else str(value)
            )
    console = _console()
    console.print(fields)
    if run["metrics"]:
        table = Table("metric", "value", title=f"{len(run['metrics'])} metrics")
        for name, value in run["metrics"].items():
            table.add_row(name, _fmt(value))
        console.print(table)
    if run["artifacts"]:
        table = Table("kind", "path", title=f"{len(run['artifacts'])} artifacts")
        for a in run["artifacts"]:
            table.add_row(a["kind"], a["path"])
        console.print(table)


@runs_app.command("compare")
def compare(
    run_ids: List[str] = typer.Argument(
        ..., help="two or more run ids (or unique prefixes); ID:RUN picks one run inside a results file"
    ),
    alpha: float = typer.Option(0.05, help="significance level of the paired tests (two runs only)"),
    as_json: bool = typer.Option(False, "--json", help="print {runs, metrics: {name: {run: value}}, paired}"),
    registry: Optional[Path] = typer.Option(None, "--registry", help=REGISTRY_HELP),
):
    """Metrics side by side: one row per metric that at least one of the runs has. With two runs evaluated on the
    same prompts, a paired test per figure says whether their difference is beyond noise (exact McNemar on
    one yes/no sample per prompt, else Wilcoxon signed-rank on per-prompt values)."""
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha must be between 0 and 1, got {alpha:g}")
    reg = _open(registry)
    if reg is None:
        raise UsageError("no runs to compare: the run registry does not exist yet")
    refs = [(r.split(":", 1) + [None])[:2] for r in run_ids]
    with reg:
        resolved = [(reg.resolve(i), sub or None) for i, sub in refs]  # resolved first: one bad id, no output
        resolved = list(dict.fromkeys(resolved))
        if len(resolved) < 2:
            raise UsageError("runs compare needs at least two different run ids")
        ids = list(dict.fromkeys(i for i, _ in resolved))
        runs = [reg.get(i) for i in ids]
    paired = _paired(resolved, {r["id"]: r for r in runs}, alpha) if len(resolved) == 2 else None
    names = sorted({n for run in runs for n in run["metrics"]})
    if as_json:
        _echo_json(
            {
                "runs": [{k: r[k] for k in ("id", "command", "suite", "method", "model", "status")} for r in runs],
                "metrics": {n: {r["id"]: r["metrics"].get(n) for r in runs if n in r["metrics"]} for n in names},
            }
            | ({"paired": paired} if paired is not None else {})
        )
        return
    from rich.table import Table

    table = Table("metric", *(f"{r['id']}\n{r['command']} {r['method'] or ''}".rstrip() for r in runs))
    for n in names:
        table.add_row(n, *(_fmt(r["metrics"][n]) if n in r["metrics"] else "" for r in runs))
    console = _console()
    console.print(table)
    if not names:
        typer.echo("none of these runs has metrics")
    if paired is not None:
        _print_paired(console, paired)


def _paired(refs: list[tuple[str, Optional[str]]], runs: dict[str, dict], alpha: float) -> dict:
    """The paired tests of two runs from their samples.jsonl files (a note instead where a run has none)."""
    from obliviate.runs.paired import paired_tests, read_samples

    (a, sub_a), (b, sub_b) = refs
    label = lambda i, sub: f"{i}:{sub}" if sub else i
    head = {"a": label(a, sub_a), "b": label(b, sub_b), "alpha": alpha}
    rows = []
    for i in (a, b):
        out_dir = runs[i].get("out_dir")
        path = Path(out_dir) / "samples.jsonl" if out_dir else None
        if path is None or not path.is_file():
            return head | {"rows": [], "note": f"run {i} has no samples.jsonl (per-prompt outcomes): no paired test"}
        rows.append(read_samples(path))
    return head | paired_tests(rows[0], rows[1], sub_a, sub_b, alpha)


def _print_paired(console, paired: dict) -> None:
    from rich.table import Table

    title = f"paired tests on the same prompts: A = {paired['a']}, B = {paired['b']}"
    if not paired["rows"]:
        typer.echo(f"{title}\n{paired['note']}")
        return
    table = Table("run", "figure", "A", "B", "prompts", "test", "p", "verdict", title=title)
    for r in paired["rows"]:
        runs = r["run_a"] if r["run_a"] == r["run_b"] else f"{r['run_a']} / {r['run_b']}"
        matched = f"{r['n']} matched" + (
            f" ({r['only_a']} only in A, {r['only_b']} only in B)" if r["only_a"] or r["only_b"] else ""
        )
        if r["test"] is None:
            table.add_row(runs, r["figure"], "", "", matched, "", "", r["verdict"])
            continue
        detail = (
            f"{r['discordant'][0]} vs {r['discordant'][1]} discordant"
            if "discordant" in r
            else f"N = {r['samples_a']} / {r['samples_b']} per prompt, {r['nonzero']} differ"
        )
        table.add_row(
            runs,
            r["figure"],
            _fmt(r["a"]),
            _fmt(r["b"]),
            matched,
            f"{r['test']}; {detail}",
            f"{r['p']:.3g}",
            r["verdict"],
        )
    console.print(table)
    from obliviate.runs.paired import TESTS

    notes = [paired["note"]] if paired["note"] else []
    notes += [f"{t}: {TESTS[t]}" for t in dict.fromkeys(r["test"] for r in paired["rows"]) if t in TESTS]
    notes.append(
        f"A and B are the figures on the matched prompts; two-sided tests at alpha {paired['alpha']:g}, one per "
        "row (with many rows, some 'beyond noise' verdicts are expected by chance alone)"
    )
    typer.echo("\n".join(notes))


@runs_app.command("rm")
def rm(
    run_ids: List[str] = typer.Argument(..., help="run ids (or unique prefixes)"),
    as_json: bool = typer.Option(False, "--json", help="print {removed: [ids]}"),
    registry: Optional[Path] = typer.Option(None, "--registry", help=REGISTRY_HELP),
):
    """Remove runs from the registry (their output directories stay on disk)."""
    reg = _open(registry)
    if reg is None:
        raise UsageError(f"no run {run_ids[0]!r}: the run registry does not exist yet")
    with reg:
        ids = list(dict.fromkeys(reg.resolve(r) for r in run_ids))  # every id checked before any is removed
        reg.delete_runs(ids)
    if as_json:
        _echo_json({"removed": ids})
    else:
        typer.echo(f"removed {len(ids)} run{'s' if len(ids) != 1 else ''}: {' '.join(ids)}")


@runs_app.command("doctor")
def doctor_cmd(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    registry: Optional[Path] = typer.Option(None, "--registry", help=REGISTRY_HELP),
):
    """Mark `running` runs whose process is gone (or started over 24 h ago elsewhere) `interrupted`; check integrity."""
    from obliviate.runs.maintenance import doctor

    reg = _open(registry)
    if reg is None:
        report = {"registry": None, "running_checked": 0, "interrupted": [], "integrity": "no database yet"}
    else:
        with reg:
            report = doctor(reg)
    if as_json:
        _echo_json(report)
        return
    typer.echo(
        f"{report['registry']}: integrity {report['integrity']}; {report['running_checked']} running, "
        f"{len(report['interrupted'])} marked interrupted"
        + (f" ({' '.join(report['interrupted'])})" if report["interrupted"] else "")
    )


@runs_app.command("rebuild")
def rebuild_cmd(
    root: Path = typer.Argument(..., help="directory to walk for output directories (e.g. runs)"),
    as_json: bool = typer.Option(False, "--json", help="print {added, skipped}"),
    registry: Optional[Path] = typer.Option(None, "--registry", help=REGISTRY_HELP),
):
    """Re-index runs from the results files under ROOT (when the database is lost); known runs are skipped."""
    from obliviate.runs.maintenance import rebuild

    if not root.is_dir():
        raise UsageError(f"runs rebuild: {root} is not a directory")
    with _open(registry, create=True) as reg:
        report = rebuild(reg, root)
    if as_json:
        _echo_json(report)
        return
    typer.echo(
        f"{report['registry']}: added {len(report['added'])} run(s), {len(report['skipped'])} already registered"
    )
