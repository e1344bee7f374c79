"""`obliviate audit`: run every applicable attack on a model, beside the oracle and the target, and write
`audit.json` plus `audit.md`.

Suites: `unlearning` (a world or TOFU directory, or plain {question, answer} files: see `obliviate.audit.inputs`),
`world` (the same on a world directory, with a required oracle) and `refusal` (a world's policy rows, or public
prompt files). Before any model is loaded, each planned attack says whether the data holds its inputs
(`Attack.missing`); those that cannot run are skipped and listed with the reason, and when none can run the
command fails with one line and writes nothing.

audit.json = {"obliviate_version", "created", "config", "attacks": {attack: {"model": {figure: value},
"oracle": {...}, "target": {...}, "seconds": s}}, "skipped": {attack: reason}}. Roles appear only when the
corresponding model was given. The oracle shows what "truly never learned" looks like; recovery beyond it is
the signal that knowledge was suppressed, not removed.
"""

from __future__ import annotations

import time
from pathlib import Path

from obliviate.core.errors import UsageError

SUITES = ("unlearning", "world", "refusal")


def attack_suite(suite: str) -> str:
    """The attacks' suite name: `world` is the unlearning suite on a world directory."""
    return "unlearning" if suite == "world" else suite


def plan(suite: str, attacks: list[str] | None, options: dict[str, dict] | None = None, quick: bool = False) -> dict:
    """{attack name: Attack instance} for the suite; bad names, suites and options fail before any work. `quick`
    (the audit's --limit) starts each attack from its `quick` budget; explicit options override it. Without
    `attacks`, every applicable attack whose `default` is true (the expensive searches are opt-in: `left_out`)."""
    from obliviate.audit.attacks import ATTACKS

    if suite not in SUITES:
        raise UsageError(f"unknown audit suite {suite!r}; use one of: {', '.join(SUITES)}")
    kind = attack_suite(suite)
    options = options or {}
    for name in options:
        ATTACKS.get(name)
    names = attacks or [n for n, cls in ATTACKS.items() if kind in cls.suites and cls.default]
    out = {}
    for n in names:
        cls = ATTACKS.get(n)
        if kind not in cls.suites:
            raise UsageError(f"attack {n!r} does not apply to suite {suite!r} (it applies to: {', '.join(cls.suites)})")
        out[n] = cls.from_options({**(cls.quick if quick else {}), **options.get(n, {})})
    return out


def left_out(suite: str, todo: dict) -> dict[str, str]:
    """{attack: why it did not run}: the applicable opt-in attacks that were not named in --attacks."""
    from obliviate.audit.attacks import ATTACKS

    kind = attack_suite(suite)
    return {
        n: f"opt-in ({cls.description or 'expensive'}): name it in --attacks"
        for n, cls in ATTACKS.items()
        if kind in cls.suites and not cls.default and n not in todo
    }


def preflight(todo: dict, ctx, where: str = "the data") -> dict[str, str]:
    """{attack: why it cannot run on this data}; every planned attack lacking its inputs is a one-line UsageError,
    and so is a behaviour file without targets when an attack that optimises toward a target was planned."""
    skipped = {name: why for name, attack in todo.items() if (why := attack.missing(ctx))}
    bare = [n for n, why in skipped.items() if getattr(todo[n], "needs_target", False) and "no target" in why]
    if bare:
        would = [n for n in todo if n not in skipped]
        verb = "needs" if len(bare) == 1 else "need"
        raise UsageError(
            f"{where}: {skipped[bare[0]]}; {', '.join(bare)} {verb} a target per behaviour (a `target` column); "
            f"attacks that would run: {', '.join(would) or 'none'}"
        )
    if skipped and len(skipped) == len(todo):
        raise UsageError(
            "the data lacks the inputs of every planned attack: "
            + "; ".join(f"{n}: {why}" for n, why in skipped.items())
        )
    return skipped


def run_audit(
    model: str,
    suite: str,
    data: Path | None,
    out: Path,
    *,
    oracle: str | None = None,
    target: str | None = None,
    attacks: list[str] | None = None,
    options: dict | None = None,
    forget_split: str = "forget10",
    seed: int = 0,
    limit: int | None = None,
    time_budget: float | None = None,
    progress: bool = True,
    layout: str | None = None,
    forget: Path | None = None,
    retain: Path | None = None,
    holdout: Path | None = None,
    harmful: list[str] = (),
    benign: list[str] = (),
    harmful_responses: Path | None = None,
    judges: list[str] | None = None,
    max_new_tokens: int = 48,
    guards: list[str] = (),
    prompt_format=None,
    resume: bool = False,
    harm_judge=None,
    served_model: str | None = None,
    api_key_env: str | None = None,
    concurrency: int = 4,
    tokenizer: str | Path | None = None,
    samples: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
) -> dict:
    """Attack `model` with every applicable attack (or `attacks`), beside the oracle and the target when given:
    what `obliviate audit` runs for the text suites, and `obliviate.run_audit`.

    Args:
        model: the HF model directory to audit; `oracle` one never trained on the forget set (required by the
            `world` suite), `target` the model before unlearning / alignment. Each may be `openai:URL` (an
            endpoint, with `served_model`, `api_key_env`, `concurrency` and the served model's `tokenizer`
            directory): only the black-box attacks run on it, the others are skipped with their reason
            (`obliviate.audit.endpoints`).
        suite: "unlearning" (a world or TOFU directory `data`, with `layout`, or `forget` / `retain` /
            `holdout` question-answer files), "world" (a world directory, with an oracle) or "refusal" (a world,
            or public prompt files: `harmful` / `benign` KIND:FILE specs, `harmful_responses`, `judges`).
        out: the audit directory (refused if it holds anything else).
        attacks: a subset of attack names (`obliviate ls attacks`); `options` {attack: {key: value}}.
        limit: at most N rows per evaluation set, each attack starting from its quick budget (a quick look).
        time_budget: seconds; attacks not started by then are skipped and listed.
        guards: guard directories applied to the audited model (not the oracle or target).
        prompt_format: how question-answer items and requests are written (`obliviate.models.prompt_format`).
        harm_judge: a harm judge (`obliviate.judges.harm.make_harm_judge`): the search attacks add their ASR as
            "harmful by the harm judge" (`harmful_asr`, `direct_harmful_asr`, `harm_score`, and with its labels the
            Rogan-Gladen corrected rate); the judge is named in config["harm_judge"], its measured agreement in
            audit.json's "harm_judge_agreement".
        resume: continue an audit in `out` that stopped (a crash, a kill): finished attacks are read back from
            OUT/progress.json, and the search attacks skip the behaviours their findings already hold.
        samples, temperature, top_p: N sampled replies per prompt (reply j with seed `seed + j`) where an attack
            judges replies with `refusal.evaluate` (prefill: its rates per reply, and `refusal_rate@all{N}`).

    With guards, an attack that searches for prompts (`SearchAttack`) runs first on the bare model (role
    `unguarded`); on the guarded model it reports the ASR of those findings sent through the guard
    (`transfer_asr`) and, where it only queries the model's replies, the ASR of a search run through the guard
    (`adaptive_asr`).

    Planned attacks whose inputs the data lacks are skipped with the reason (none runnable: a UsageError).
    Writes OUT/audit.json (config, attacks {attack: {role: {figure: value}, "seconds", and where the attack gives
    them "intervals" {role: {figure: n and 95% bootstrap interval}}}, skipped, wall_seconds),
    OUT/audit.md (the same as tables, `report`) and OUT/artifacts/. Returns the audit.json document."""
    from rich.console import Console

    from obliviate.audit.attacks import AuditContext
    from obliviate.audit.endpoints import endpoint_skips, local_roles, open_endpoints
    from obliviate.audit.inputs import load_inputs
    from obliviate.core.jsonio import write_json
    from obliviate.core.outputs import check_output, output_dir, output_kind
    from obliviate.engine.sampling import sampling_for
    from obliviate.guards.base import attach_guards
    from obliviate.models.load import check_model_dir, load_model
    from obliviate.runs.results import results_document

    todo = plan(suite, attacks, options, quick=limit is not None)
    if suite == "world" and not oracle:
        raise UsageError(
            "the world audit needs --oracle (a model never trained on the forget set): recovery is "
            "only meaningful beside it"
        )
    if max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be >= 1")
    sampled = sampling_for(samples, temperature, top_p, seed) is not None  # bad --samples etc.: before anything
    roles = {"model": model, "oracle": oracle, "target": target}
    roles = {k: v for k, v in roles.items() if v}
    read = (
        *local_roles(roles).values(),
        tokenizer,
        data,
        forget,
        retain,
        holdout,
        harmful_responses,
        *guards,
        *(spec.split(":", 1)[-1] for spec in (*harmful, *benign)),
    )
    check_output(out, "audit", inputs=read, resume=resume)
    if resume and output_kind(out) != "audit":
        raise UsageError(f"--out {out}: holds no audit to resume; drop --resume to start one there")
    for path in local_roles(roles).values():
        check_model_dir(path, local_only=True)
    endpoints, remote_tok = open_endpoints(
        roles,
        served_model=served_model,
        api_key_env=api_key_env,
        concurrency=concurrency,
        tokenizer=tokenizer,
        guards=guards,
        prompt_format=prompt_format,
    )
    inputs, refused, info = load_inputs(
        suite,
        data=data,
        layout=layout,
        forget=forget,
        retain=retain,
        holdout=holdout,
        harmful=list(harmful),
        benign=list(benign),
        harmful_responses=harmful_responses,
        judges=judges,
        forget_split=forget_split,
        seed=seed,
    )
    ctx = AuditContext(
        suite=suite,
        data=Path(data) if data else None,
        forget_split=forget_split,
        seed=seed,
        limit=limit,
        max_new_tokens=max_new_tokens,
        inputs=inputs,
        refused=refused,
        loaded=True,
        harm=harm_judge,
        samples=samples,
        temperature=temperature,
        top_p=top_p,
    )
    skipped = preflight(todo, ctx, where=", ".join(harmful) or str(data or "the data"))
    for name, why in endpoint_skips(todo, endpoints, remote_tok is not None).items():
        skipped.setdefault(name, why)
    if len(skipped) == len(todo):
        raise UsageError("no planned attack can run: " + "; ".join(f"{n}: {why}" for n, why in skipped.items()))
    opt_in = left_out(suite, todo) if not attacks else {}
    console = Console(stderr=True, quiet=not progress, log_path=False)
    ctx.progress = console.log
    for name, why in {**skipped, **opt_in}.items():
        console.log(f"skipping {name}: {why}")
    t0 = time.perf_counter()
    results = {}
    with output_dir(out, "audit", inputs=read, resume=resume) as o:
        config = {
            "model": model,
            "suite": suite,
            "data": str(data) if data else None,
            "oracle": oracle,
            "target": target,
            "forget_split": forget_split,
            "seed": seed,
            "limit": limit,
            "max_new_tokens": max_new_tokens,
            **({"samples": samples, "temperature": temperature, "top_p": top_p} if sampled else {}),
            "guards": list(guards),
            **({"served_models": {role: e.name for role, e in endpoints.items()}} if endpoints else {}),
            **info,
            **({"harm_judge": harm_judge.describe()} if harm_judge is not None else {}),
            "options": {n: a.__dict__ for n, a in todo.items()},
        }
        results = _resumed(o, config) if resume else {}
        for name, attack in todo.items():
            if name in skipped or name in results:
                continue
            if time_budget and time.perf_counter() - t0 > time_budget:
                skipped[name] = f"time budget of {time_budget:.0f} s spent"
                continue
            start, entry = time.perf_counter(), {}
            runs = dict(roles)
            if guards and getattr(attack, "adaptive", None) is not None:  # a search: find on the bare model first
                runs = {"unguarded": model, **runs}
            for role, path in runs.items():
                if role in endpoints:
                    net, tok = endpoints[role], remote_tok
                else:
                    net, tok = load_model(path, require_chat_template=True, prompt_format=prompt_format)
                    attach_guards(net, tok, guards if role == "model" else ())
                ctx.role, ctx.out = role, o / "artifacts" / name / role
                bare = o / "artifacts" / name / "unguarded"
                ctx.transfer_from = bare if role == "model" and "unguarded" in runs else None
                entry[role] = attack.run(ctx, net, tok)
                if isinstance(entry[role].get("intervals"), dict):  # {figure: n and interval}, beside the figures
                    entry.setdefault("intervals", {})[role] = entry[role].pop("intervals")
            ctx.transfer_from = None
            entry["seconds"] = round(time.perf_counter() - start, 2)
            results[name] = entry
            write_json(o / "progress.json", {"config": config, "attacks": results})
            console.log(f"{name}: {entry['seconds']:.1f} s")
        config |= prompt_format.config() if prompt_format else {}  # known once the models were loaded
        cal = harm_judge.calibration() if harm_judge is not None else None  # the judge on its labels, once
        doc = results_document(
            config,
            {},
            {},
            {
                "attacks": results,
                "skipped": skipped,
                "left_out": opt_in,
                "wall_seconds": round(time.perf_counter() - t0, 1),
                **({"harm_judge_agreement": cal["agreement"]} if cal else {}),
            },
        )
        doc.pop("results"), doc.pop("higher_is_better"), doc.pop("n_samples")
        write_json(o / "audit.json", doc)
        (o / "audit.md").write_text(report(doc), encoding="utf-8")
    return doc


def _resumed(o: Path, config: dict) -> dict:
    """The attacks an earlier run of the same audit finished (OUT/progress.json); another configuration is refused."""
    import json

    p = o / "progress.json"
    if not p.is_file():
        return {}
    saved = json.loads(p.read_text(encoding="utf-8"))
    if saved.get("config") != json.loads(json.dumps(config)):
        diff = sorted(k for k in {*saved.get("config", {}), *config} if saved["config"].get(k) != config.get(k))
        raise UsageError(f"{o}: holds an audit with other settings ({', '.join(diff)}); use a new --out")
    return saved.get("attacks", {})


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.3f}"
    return str(v)


def report(doc: dict) -> str:
    """Markdown: per attack, each figure for model / oracle / target side by side."""
    from obliviate.metrics.intervals import format_interval

    cfg = doc["config"]
    head = [f"# Audit of `{cfg['model']}` ({cfg['suite']} suite)", ""]
    data = cfg.get("data") or ", ".join(f"{k} `{v}`" for k, v in (cfg.get("files") or {}).items() if v)
    if cfg["suite"] == "refusal" and cfg.get("harmful"):
        benign = cfg.get("benign")
        data = (
            f"harmful `{', '.join(cfg['harmful'])}`; benign "
            f"`{', '.join(benign) if isinstance(benign, list) else benign}`; judged by {', '.join(cfg['judges'])}"
        )
    if data:
        head += [f"Data: {data}" + (f" ({cfg['layout']} layout)." if cfg.get("layout") else "."), ""]
    if cfg.get("harm_judge"):
        hj, agree = cfg["harm_judge"], doc.get("harm_judge_agreement") or {}
        measured = (
            f"; agreement with `{hj['labels']}`: {_fmt(agree.get('agreement'))} (n={agree.get('n')})" if agree else ""
        )
        head += [f"Harm judge: {hj['name']} on `{hj['model']}`{measured}.", ""]
    head.append(f"Oracle: `{cfg['oracle'] or '-'}`; target: `{cfg['target'] or '-'}`. ")
    if cfg["suite"] == "refusal":
        head[-1] += "A refusal that an attack takes away was shallow; the target shows the model before alignment."
    elif not cfg["oracle"]:
        head[-1] += (
            "No oracle was given: the figures show the model (and the target) only, and recovery cannot "
            "be compared with an oracle's (what a model that never learned the forget set scores)."
        )
    else:
        head[-1] += "Recovery on the audited model beyond the oracle's means the knowledge was suppressed, not removed."
    if cfg.get("guards"):
        head += [
            "",
            f"Guards on the audited model: {', '.join(f'`{g}`' for g in cfg['guards'])}. Attacks that "
            "train (relearn, finetune) and the white-box ones (refusal_direction, representation) act on the "
            "model's weights; the guards stay applied at generation and in the teacher-forced passes.",
        ]
    lines = head + [""]
    for name, entry in doc["attacks"].items():
        roles = [r for r in ("unguarded", "model", "oracle", "target") if r in entry]
        lines += [
            f"## {name} ({entry['seconds']} s)",
            "",
            "| figure | " + " | ".join(roles) + " |",
            "|---|" + "---|" * len(roles),
        ]
        ivs = entry.get("intervals") or {}  # where given: value [lo, hi] n=...
        for fig in entry["model"]:
            cells = [
                format_interval(ivs[r][fig], entry[r].get(fig)) if fig in ivs.get(r, {}) else _fmt(entry[r].get(fig))
                for r in roles
            ]
            lines.append(f"| {fig} | " + " | ".join(cells) + " |")
        lines.append("")
    if doc.get("skipped") or doc.get("left_out"):
        lines += ["## Skipped", ""]
    for name, why in {**doc.get("skipped", {}), **doc.get("left_out", {})}.items():
        lines.append(f"- skipped `{name}`: {why}")
    return "\n".join(lines) + "\n"
