"""Refusal on public prompt sets, for any chat model: `refusal-eval --harmful KIND:FILE --benign KIND:FILE`.

A source is `KIND:FILE`, KIND one of `obliviate prompts`' sets (xstest, harmbench, jailbreakbench, advbench,
orbench, coconot, past_tense). `--harmful` takes the rows a model should refuse (label "harmful"), `--benign`
the rows it should answer (label "benign"): `--benign xstest:xstest_prompts.csv` is XSTest's 250 safe prompts,
`--harmful xstest:...` its 200 unsafe ones.

Each row becomes an evaluation row of `obliviate.refusal.evaluate` ({"id", "prompt", "answer", "kind",
"category"}), so the metrics, samples and results schema are the world's:
- the prompt is the behaviour, after its context where the set has one (HarmBench's contextual behaviours are
  shown as `context + "\\n\\n---\\n\\n" + behaviour`, HarmBench's own layout);
- the "answer" that a prefill of depth k cuts is the row's affirmative target ("Sure, here is ..."), shipped by
  AdvBench and JailbreakBench and built by `obliviate.data.prompts.affirmative_target` for the others. Public sets
  ship no harmful answers, so `refusal_rate@prefill{k}` prefills min(k, target length) tokens of that target.
"""

from __future__ import annotations

from pathlib import Path

from obliviate.core.errors import UsageError

PUBLIC_DEPTHS = (5, 10, 20)


def parse_source(spec: str) -> tuple[str, Path]:
    """`KIND:FILE` -> (kind, path); an unknown kind gets the registry's did-you-mean."""
    from obliviate.data.prompts import PROMPT_SETS

    kind, sep, path = spec.partition(":")
    if not sep or not kind or not path:
        raise UsageError(f"a prompt source is KIND:FILE (e.g. harmbench:behaviors.csv), got {spec!r}")
    PROMPT_SETS.get(kind.strip())
    return kind.strip(), Path(path)


def prompt_text(row: dict) -> str:
    return f"{row['context']}\n\n---\n\n{row['prompt']}" if row.get("context") else row["prompt"]


def load_sources(specs: list[str], label: str, allow_none: bool = False) -> list[dict]:
    """Evaluation rows of `label` ("harmful" / "benign") from every `KIND:FILE` source, in order. A source without
    such rows is a UsageError unless `allow_none`."""
    from obliviate.data.prompts import load_prompts

    rows = []
    for spec in specs:
        kind, path = parse_source(spec)
        got = [r for r in load_prompts(kind, path) if r["label"] == label]
        if not got and not allow_none:
            raise UsageError(f"{path}: no {label} prompts in this {kind} file")
        rows += [
            {
                "id": r["id"],
                "prompt": prompt_text(r),
                "answer": r["target"],
                "refusal": "",
                "kind": label,
                "category": r["category"] or kind,
                "source": kind,
                "contextual": bool(r.get("context")),  # HarmBench's behaviours with a context string
            }
            for r in got
        ]
    return rows


def rates_by(samples: list[dict], key: str) -> dict[str, dict[str, float]]:
    """{"harmful": {value: refusal rate at depth 0}, "benign": {value: over-refusal rate}} grouped by `key`."""
    out: dict[str, dict[str, float]] = {}
    for kind in ("harmful", "benign"):
        groups: dict[str, list[bool]] = {}
        for s in samples:
            if s["kind"] == kind and s["depth"] == 0:
                groups.setdefault(str(s.get(key) or "-"), []).append(bool(s["refused"]))
        if groups:
            out[kind] = {g: round(sum(v) / len(v), 4) for g, v in sorted(groups.items())}
    return out


def evaluate_public(
    model,
    tok,
    rows: list[dict],
    refused_fn,
    *,
    depths=PUBLIC_DEPTHS,
    max_new_tokens: int = 48,
    generator=None,
    samples: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> tuple[dict, list[dict], dict]:
    """(metrics, samples, extra): the world's refusal metrics on public rows, plus per-category and per-source
    rates and each rate's interval in `extra` ({"by_category": ..., "by_source": ..., "refusal_positions": ...,
    "intervals": ...}). `samples`, `temperature`, `top_p`, `seed`: N sampled replies per prompt (`refusal_eval`)."""
    from obliviate.refusal.evaluate import plain_generate, refusal_eval, refusal_intervals

    by_id = {r["id"]: r for r in rows}
    metrics, records, dist = refusal_eval(
        model,
        tok,
        rows,
        depths=depths,
        max_new_tokens=max_new_tokens,
        generator=generator or plain_generate,
        refused_fn=refused_fn,
        samples=samples,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    for s in records:
        s["source"] = by_id[s["id"]]["source"]
    if not any(r["kind"] == "benign" for r in rows):
        metrics = {k: (None if k.startswith("over_refusal") else v) for k, v in metrics.items()}  # not measured
    if not any(r["kind"] == "harmful" for r in rows):
        metrics = {k: (None if k.startswith("refusal") else v) for k, v in metrics.items()}
    extra = {
        "by_category": rates_by(records, "category"),
        "by_source": rates_by(records, "source"),
        "refusal_positions": dist,
        "intervals": refusal_intervals(records, seed=seed),
    }
    return metrics, records, extra


def subsample_per_source(rows: list[dict], limit: int | None) -> list[dict]:
    """At most `limit` rows of each (source, kind), every n-th one, so categories keep their mix."""
    from obliviate.refusal.align import subsample

    if not limit:
        return rows
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["source"], r["kind"]), []).append(r)
    return [r for g in groups.values() for r in subsample(g, limit)]
