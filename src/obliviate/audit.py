"""`obliviate audit`: run every applicable attack on a model, beside the oracle and the target, and write
`audit.json` plus `audit.md`.

audit.json = {"obliviate_version", "created", "config", "attacks": {attack: {"model": {figure: value},
"oracle": {...}, "target": {...}, "seconds": s}}, "skipped": {attack: reason}}. Roles appear only when the
corresponding model was given. The oracle shows what "truly never learned" looks like; recovery beyond it is
the signal that knowledge was suppressed, not removed.
"""

from __future__ import annotations

import time
from pathlib import Path

from obliviate.errors import UsageError

SUITES = ("world", "refusal")


def plan(suite: str, attacks: list[str] | None, options: dict[str, dict] | None = None) -> dict:
    """{attack name: Attack instance} for the suite; bad names, suites and options fail before any work."""
    from obliviate.attacks import ATTACKS

    if suite not in SUITES:
        raise UsageError(f"unknown audit suite {suite!r}; use one of: {', '.join(SUITES)}")
    options = options or {}
    for name in options:
        ATTACKS.get(name)
    names = attacks or [n for n, cls in ATTACKS.items() if suite in cls.suites]
    out = {}
    for n in names:
        cls = ATTACKS.get(n)
        if suite not in cls.suites:
            raise UsageError(f"attack {n!r} does not apply to suite {suite!r} (it applies to: {', '.join(cls.suites)})")
        out[n] = cls.from_options(options.get(n, {}))
    return out


def run_audit(model: str, suite: str, data: Path, out: Path, *, oracle: str | None = None,
              target: str | None = None, attacks: list[str] | None = None, options: dict | None = None,
              forget_split: str = "forget10", seed: int = 0, limit: int | None = None,
              time_budget: float | None = None, progress: bool = True) -> dict:
    from rich.console import Console

    from obliviate.attacks import AuditContext
    from obliviate.models.load import check_model_dir, load_model
    from obliviate.pipeline import check_out_not_input, fresh_output, results_document, write_json

    todo = plan(suite, attacks, options)
    if suite == "world" and not oracle:
        raise UsageError("the world audit needs --oracle (a model never trained on the forget set): recovery is "
                         "only meaningful beside it")
    roles = {"model": model, "oracle": oracle, "target": target}
    roles = {k: v for k, v in roles.items() if v}
    for path in roles.values():
        check_out_not_input(out, path)
        check_model_dir(path, local_only=True)
    data = Path(data)
    if not data.is_dir():
        raise UsageError(f"data directory not found: {data}")
    ctx = AuditContext(suite=suite, data=data, forget_split=forget_split, seed=seed, limit=limit)
    if suite == "world":
        ctx.forget_items()  # a missing split fails here, before any attack runs
    else:
        ctx.policy()
    console = Console(stderr=True, quiet=not progress, log_path=False)
    t0 = time.perf_counter()
    results, skipped = {}, {}
    with fresh_output(out) as o:
        for name, attack in todo.items():
            if time_budget and time.perf_counter() - t0 > time_budget:
                skipped[name] = f"time budget of {time_budget:.0f} s spent"
                continue
            start, entry = time.perf_counter(), {}
            for role, path in roles.items():
                net, tok = load_model(path, require_chat_template=True)
                ctx.role, ctx.out = role, o / "artifacts" / name / role
                entry[role] = attack.run(ctx, net, tok)
            entry["seconds"] = round(time.perf_counter() - start, 2)
            results[name] = entry
            console.log(f"{name}: {entry['seconds']:.1f} s")
        config = {"model": model, "suite": suite, "data": str(data), "oracle": oracle, "target": target,
                  "forget_split": forget_split, "seed": seed, "limit": limit,
                  "options": {n: a.__dict__ for n, a in todo.items()}}
        doc = results_document(config, {}, {}, {"attacks": results, "skipped": skipped,
                                                "wall_seconds": round(time.perf_counter() - t0, 1)})
        doc.pop("results"), doc.pop("higher_is_better"), doc.pop("n_samples")
        write_json(o / "audit.json", doc)
        (o / "audit.md").write_text(report(doc), encoding="utf-8")
    return doc


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.3f}"
    return str(v)


def report(doc: dict) -> str:
    """Markdown: per attack, each figure for model / oracle / target side by side."""
    cfg = doc["config"]
    lines = [f"# Audit of `{cfg['model']}` ({cfg['suite']} suite)", "",
             f"Oracle: `{cfg['oracle'] or '-'}`; target: `{cfg['target'] or '-'}`. "
             "Recovery on the audited model beyond the oracle's means the knowledge was suppressed, not removed.", ""]
    for name, entry in doc["attacks"].items():
        roles = [r for r in ("model", "oracle", "target") if r in entry]
        lines += [f"## {name} ({entry['seconds']} s)", "", "| figure | " + " | ".join(roles) + " |",
                  "|---|" + "---|" * len(roles)]
        for fig in entry["model"]:
            lines.append(f"| {fig} | " + " | ".join(_fmt(entry[r].get(fig)) for r in roles) + " |")
        lines.append("")
    for name, why in doc.get("skipped", {}).items():
        lines.append(f"- skipped `{name}`: {why}")
    return "\n".join(lines) + "\n"
