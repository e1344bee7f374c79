"""`obliviate report`: one self-contained HTML page (figures, per-sample table, provenance) from run directories."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from obliviate.cli.common import UsageError


def _resolve(ref: str) -> Path:
    """A run directory, or a run id (or unique prefix) of the run registry, resolved to its output directory."""
    path = Path(ref)
    if path.is_dir():
        return path
    if path.exists():
        raise UsageError(f"{ref} is not a directory (give a run directory or a run id)")
    if "/" in ref or "\\" in ref or ref.startswith("."):  # a path, not a run id: say so plainly
        raise UsageError(f"no such run directory: {ref}")
    try:
        from obliviate.runs import RunStore, registry_path
    except ImportError:  # a build without the run registry: only directories can be reported
        raise UsageError(f"no such run directory: {ref}") from None
    db = registry_path(None)
    if db is None or not Path(db).is_file():
        raise UsageError(f"no such run directory: {ref} (and no run registry to look it up as a run id)")
    with RunStore.open(db) as reg:
        run = reg.get(ref)  # an unknown id: UsageError with a close match
    out = run.get("out_dir")
    if not out or not Path(out).is_dir():
        raise UsageError(f"run {run['id']} has no output directory on this machine (recorded: {out or 'none'})")
    return Path(out)


def report(
    runs: List[str] = typer.Argument(
        ...,
        metavar="RUN_DIR_OR_ID...",
        help="run directories (results.json, audit.json, leaderboard.json, "
        "calibration.json or sweep.json inside) or run ids",
    ),
    out: Path = typer.Option(Path("report.html"), help="the HTML file to write (replaced atomically)"),
):
    """One self-contained HTML report of one or more runs: Pareto front, MIA ROC, truth ratios, refusal at depth,
    audits, calibration, guards, diffusion grids, and a searchable per-sample table. Works offline."""
    from obliviate.core.outputs import check_output_file
    from obliviate.report.html import RESULT_FILES, write_report

    sources = [_resolve(r) for r in runs]
    # an earlier report is replaced; a file the report reads never is
    check_output_file(
        out,
        inputs=[s / f for s in sources for f in (*RESULT_FILES, "samples.jsonl")]
        + [g for s in sources for g in (*s.glob("grids/*.png"), *s.glob("guards/*/guard.json"))],
    )
    info = write_report(sources, out)
    typer.echo(
        f"wrote {out} ({info['bytes'] / 1e6:.2f} MB, {len(info['figures'])} figures, "
        f"{info['rows']:,} of {info['rows_total']:,} sample rows in the table)"
    )
