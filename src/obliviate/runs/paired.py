"""Is a difference between two runs beyond noise? Paired tests on the prompts both runs were evaluated on, for
`obliviate runs compare A B`.

Each run's samples.jsonl is read into per-prompt outcomes, one list per (sub-run, figure, prompt):
- refusal rows (`refusal-eval`, the refusal demos: "kind", "depth", "refused") give `refusal_rate` (harmful, depth
  0), `refusal_rate@prefill{k}` and `over_refusal_rate` (benign), prefixed `{split}_` where a row has a split (the
  world's held-out objects); with N > 1 samples per prompt in both runs, also the worst case over a prompt's N
  replies (`refusal_rate@all{N}`: refused in every reply; `over_refusal_rate@any{N}`: refused in any), as
  `obliviate.refusal.evaluate` defines them;
- unlearning rows (`eval`, the world and real demos: "split", "value_hit", "rouge_l_recall") give `{split}_value_acc`
  (rows with a value; `{split}_value_acc@any{N}` with N > 1 answers in both runs) and `{split}_rouge`.
A prompt is its ("id", prompt text) pair, so two runs pair up only on the same prompt. With several samples per
prompt (N > 1: several rows with the same prompt, or a list of judgements in one row) each prompt holds N outcomes.

The tests (both two-sided, on the matched prompts only):
- exact McNemar: yes/no outcomes, one sample per prompt in both runs. Under "no difference" each discordant pair
  (yes in one run, no in the other) goes either way with probability 1/2, so the count of one kind is
  Binomial(discordant, 1/2) (McNemar 1947; the exact form, `scipy.stats.binomtest`);
- Wilcoxon signed-rank on the per-prompt values (a prompt's rate over its N samples, or a per-item figure such as
  ROUGE): `scipy.stats.wilcoxon`, zero differences dropped (Wilcoxon 1945). No difference at all: p = 1.

Forget quality and model utility are figures of a whole split (a KS test, a harmonic mean), with no per-prompt
value: they are not paired here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from obliviate.core.errors import UsageError

ALPHA = 0.05
MCNEMAR = "exact McNemar"
WILCOXON = "Wilcoxon signed-rank"
TESTS = {
    MCNEMAR: "a binomial test on the discordant prompts (yes in one run only), one yes/no sample per prompt",
    WILCOXON: "on the per-prompt values: a prompt's rate over its N samples, or a per-item figure (ROUGE)",
}


def verdict(p: float, alpha: float = ALPHA) -> str:
    return f"beyond noise at {alpha:g}" if p < alpha else "within noise"


def mcnemar_exact(a: list[bool], b: list[bool]) -> dict:
    """Exact McNemar on paired yes/no outcomes: {"test", "p", "discordant": [yes in a only, yes in b only]}."""
    from scipy.stats import binomtest

    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue)
    return {"test": MCNEMAR, "p": p, "discordant": [only_a, only_b]}


def wilcoxon_paired(a: list[float], b: list[float]) -> dict:
    """Wilcoxon signed-rank on paired values: {"test", "p", "nonzero": prompts whose values differ}."""
    from scipy.stats import wilcoxon

    d = [x - y for x, y in zip(a, b)]
    nonzero = sum(1 for v in d if v != 0)
    p = 1.0 if nonzero == 0 else float(wilcoxon(d, zero_method="wilcox").pvalue)
    return {"test": WILCOXON, "p": p if math.isfinite(p) else 1.0, "nonzero": nonzero}


def read_samples(path: Path) -> list[dict]:
    """The JSON objects of a samples.jsonl file (UsageError naming the line that is not JSON)."""
    rows = []
    try:
        with Path(path).open(encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):
                    raise UsageError(f"{path}:{i} is not a JSON line") from None
                if isinstance(row, dict):
                    rows.append(row)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    return rows


def _bools(v) -> list[bool]:
    if isinstance(v, bool):
        return [v]
    if isinstance(v, list) and v and all(isinstance(x, bool) for x in v):
        return list(v)
    return []


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _figures(row: dict) -> list[tuple[str, tuple, list]]:
    """(figure, prompt key, outcomes) that one samples.jsonl row contributes."""
    if row.get("kind") in ("harmful", "benign") and "refused" in row:
        outcomes = _bools(row["refused"])
        if not outcomes:
            return []
        depth = row.get("depth") or 0
        name = (
            "over_refusal_rate"
            if row["kind"] == "benign"
            else "refusal_rate"
            if depth == 0
            else f"refusal_rate@prefill{depth}"
        )
        prefix = f"{row['split']}_" if isinstance(row.get("split"), str) and row["split"] else ""
        return [(prefix + name, (str(row.get("id")), str(row.get("prompt"))), outcomes)]
    split = row.get("split")
    if not isinstance(split, str):
        return []
    key = (str(row.get("id")), str(row.get("question", row.get("prompt"))))
    out = []
    if row.get("value") and _bools(row.get("value_hit")):
        out.append((f"{split}_value_acc", key, _bools(row["value_hit"])))
    if _number(row.get("rouge_l_recall")):
        out.append((f"{split}_rouge", key, [float(row["rouge_l_recall"])]))
    return out


def outcomes(rows: list[dict]) -> dict[str, dict[str, dict[tuple, list]]]:
    """{sub-run: {figure: {prompt key: [outcome per sample]}}}; rows without a "run" belong to sub-run ""."""
    out: dict[str, dict[str, dict[tuple, list]]] = {}
    for row in rows:
        run = str(row.get("run", "") if row.get("run") is not None else "")
        for name, key, values in _figures(row):
            out.setdefault(run, {}).setdefault(name, {}).setdefault(key, []).extend(values)
    return out


def _mean(values: list) -> float:
    return sum(float(v) for v in values) / len(values)


def compare_figure(a: dict[tuple, list], b: dict[tuple, list], alpha: float = ALPHA) -> dict:
    """One figure of two runs, paired on their common prompts: {"n" (matched prompts), "only_a", "only_b",
    "samples_a", "samples_b" (most samples per prompt), "a", "b" (the figure on the matched prompts), "test", "p",
    "verdict", ...}; with no prompt in common, "test" is None and "verdict" says so."""
    common = [k for k in a if k in b]
    row = {"n": len(common), "only_a": len(a) - len(common), "only_b": len(b) - len(common)}
    if not common:
        return row | {"a": None, "b": None, "test": None, "p": None, "verdict": "different prompts: no test"}
    xs, ys = [a[k] for k in common], [b[k] for k in common]
    row |= {
        "samples_a": max(map(len, xs)),
        "samples_b": max(map(len, ys)),
        "a": _mean([_mean(x) for x in xs]),
        "b": _mean([_mean(y) for y in ys]),
    }
    yes_no = all(len(v) == 1 and isinstance(v[0], bool) for v in xs + ys)
    res = (
        mcnemar_exact([x[0] for x in xs], [y[0] for y in ys])
        if yes_no
        else wilcoxon_paired([_mean(x) for x in xs], [_mean(y) for y in ys])
    )
    return row | res | {"verdict": verdict(res["p"], alpha)}


def _worst_case(name: str, a: dict[tuple, list], b: dict[tuple, list], res: dict) -> dict | None:
    """{"figure", "outcomes": (a, b)} of a rate's worst case over N replies, when both runs sampled the same N > 1
    yes/no replies per prompt; else None (any of 5 and any of 10 are not the same figure). Over-refusal and value
    accuracy (the value leaks) take "any" reply, refusal "all" replies."""
    n = res.get("samples_a")
    refusal = name.endswith("refusal_rate") or "refusal_rate@prefill" in name
    if not (refusal or name.endswith("_value_acc")) or not n or n < 2 or res.get("samples_b") != n:
        return None
    sides = [{k: v for k, v in side.items() if len(v) == n and all(isinstance(x, bool) for x in v)} for side in (a, b)]
    worst = all if refusal and "over_refusal" not in name else any
    return {
        "figure": f"{name}@{'any' if worst is any else 'all'}{n}",
        "outcomes": tuple({k: [worst(v)] for k, v in side.items()} for side in sides),
    }


def pair_runs(names_a: list[str], names_b: list[str], sub_a: str | None, sub_b: str | None) -> list[tuple[str, str]]:
    """Which sub-runs of A meet which of B: the named ones, else those of the same name, else the only one of
    each; UsageError when a named sub-run is absent."""
    for sub, names, side in ((sub_a, names_a, "A"), (sub_b, names_b, "B")):
        if sub is not None and sub not in names:
            shown = ", ".join(repr(n) for n in names) or "none"
            raise UsageError(f"runs compare: run {side} has no samples of {sub!r} (its runs: {shown})")
    if sub_a is not None or sub_b is not None:
        pick = lambda sub, names, other: (
            sub if sub is not None else other if other in names else (names[0] if len(names) == 1 else None)
        )
        a, b = pick(sub_a, names_a, sub_b), pick(sub_b, names_b, sub_a)
        return [(a, b)] if a is not None and b is not None else []
    common = [n for n in names_a if n in names_b]
    if common:
        return [(n, n) for n in common]
    return [(names_a[0], names_b[0])] if len(names_a) == 1 and len(names_b) == 1 else []


def paired_tests(
    rows_a: list[dict],
    rows_b: list[dict],
    sub_a: str | None = None,
    sub_b: str | None = None,
    alpha: float = ALPHA,
) -> dict:
    """Every figure both runs' samples hold, paired prompt by prompt: {"alpha", "rows": [{"run_a", "run_b",
    "figure", ...compare_figure}], "note"} where "note" says why nothing was tested (else "")."""
    oa, ob = outcomes(rows_a), outcomes(rows_b)
    pairs = pair_runs(list(oa), list(ob), sub_a, sub_b)
    out = {"alpha": alpha, "rows": [], "note": ""}
    if not oa or not ob:
        out["note"] = "no per-prompt outcomes in " + " and ".join(s for s, o in (("A", oa), ("B", ob)) if not o)
        return out
    if not pairs:
        out["note"] = f"no sub-run in common (A: {', '.join(oa)}; B: {', '.join(ob)}): name them as ID:RUN"
        return out
    for ra, rb in pairs:
        for name in [n for n in oa[ra] if n in ob[rb]]:
            res = compare_figure(oa[ra][name], ob[rb][name], alpha)
            out["rows"].append({"run_a": ra, "run_b": rb, "figure": name} | res)
            worst = _worst_case(name, oa[ra][name], ob[rb][name], res)
            if worst is not None:
                out["rows"].append({"run_a": ra, "run_b": rb} | worst | compare_figure(*worst.pop("outcomes"), alpha))
    if not out["rows"]:
        out["note"] = "the runs share no figure measured per prompt"
    elif all(r["test"] is None for r in out["rows"]):
        out["note"] = "the runs were evaluated on different prompts (none in common): no paired test"
    return out
