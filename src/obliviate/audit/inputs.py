"""What `obliviate audit` reads, for each suite and data layout (the attacks then read it from `AuditContext`).

Unlearning suites (`--suite unlearning`; `--suite world` is the same on a world directory, with `--oracle`):

| layout | forget | retain (evaluated) | retain_train (probes fit on it) | holdout (non-members) |
|---|---|---|---|---|
| world directory (`obliviate world`) | `{forget}.jsonl` | `retain_eval.jsonl`, else the retain file | `retain{keep}.jsonl` | `holdout.jsonl` |
| TOFU directory (locuslab/TOFU `data/`) | `{forget}_perturbed.json`, else `{forget}.json` | `retain_perturbed.json`, else the retain file | `retain{keep}.json` | `holdout{pct}.json` |
| files | `--forget FILE` | `--retain FILE` (optional) | the same | `--holdout FILE` |

A directory's layout is told from its files (world: `train` / `retain_eval`; TOFU: `{forget}_perturbed` /
`retain_perturbed` / `{forget}.json`), or given with `--layout`. Any file may be JSONL, a JSON list, Parquet or Arrow
with at least `question` and `answer`. `--holdout FILE` replaces a directory's own holdout file.

Refusal suite: a world directory gives `policy_test` (measured) and `policy_train` (what `refusal_direction` and
`finetune` may use), judged by the keyword judges. Public prompt files (`--harmful KIND:FILE`, `--benign KIND:FILE`,
else the shipped benign pool) are split per (source, kind) into a seeded half to train on and the other half to
measure on; `prefill`, `completion` and `tense` train nothing and use every row. Public replies are judged by
`obliviate.judges.default.make_judge` (the strongest installed judge).
"""

from __future__ import annotations

import random
from pathlib import Path

from obliviate.core.errors import UsageError

LAYOUTS = ("world", "tofu")
_MARKERS = {"world": ("train", "retain_eval"), "tofu": ("{forget}_perturbed", "retain_perturbed", "full")}
_TABLES = (".jsonl", ".json", ".parquet", ".arrow")


def _stem_exists(data: Path, stem: str) -> bool:
    return any((data / f"{stem}{ext}").is_file() for ext in _TABLES)


def detect_layout(data: Path, forget_split: str) -> str:
    """ "world" or "tofu", from the files the directory holds; neither: a one-line UsageError."""
    found = [
        name
        for name, stems in _MARKERS.items()
        if any(_stem_exists(data, s.format(forget=forget_split)) for s in stems)
    ]
    if len(found) == 1:
        return found[0]
    if (data / f"{forget_split}.jsonl").is_file():
        return "world"
    if (data / f"{forget_split}.json").is_file():
        return "tofu"
    raise UsageError(
        f"{data} holds neither a world ({forget_split}.jsonl, retain_eval.jsonl) nor TOFU files "
        f"({forget_split}.json, {forget_split}_perturbed.json); give --layout, or --forget FILE"
    )


def _file(suite, data: Path, pattern: str, forget_split: str) -> Path | None:
    p = suite._existing(data / suite._fill(pattern, forget_split))
    return p if p.is_file() else None


def unlearning_inputs(
    *,
    data: Path | None = None,
    layout: str | None = None,
    forget: Path | None = None,
    retain: Path | None = None,
    holdout: Path | None = None,
    forget_split: str = "forget10",
) -> dict:
    """{"forget", "retain", "retain_train", "holdout": [QAItem] (possibly empty), "layout", "files": {part: path}}."""
    from obliviate.benchmarks.layouts import SUITES
    from obliviate.data.schema import load_qa

    if data is not None and (forget or retain):
        raise UsageError("give either --data DIR or --forget FILE [--retain FILE], not both")
    files: dict[str, Path | None] = {}
    if data is not None:
        data = Path(data)
        if not data.is_dir():
            raise UsageError(f"data directory not found: {data}")
        layout = layout or detect_layout(data, forget_split)
        if layout not in LAYOUTS:
            raise UsageError(f"unknown layout {layout!r}; use one of: {', '.join(LAYOUTS)}")
        suite = SUITES.get(layout)
        ev = suite.eval_files
        train_forget, train_retain = (
            _file(suite, data, f, forget_split) for f in (suite.forget_file, suite.retain_file)
        )
        files["forget"] = _file(suite, data, ev["forget"].pattern, forget_split) or train_forget
        files["retain"] = _file(suite, data, ev["retain"].pattern, forget_split) or train_retain
        files["retain_train"] = train_retain or files["retain"]
        files["holdout"] = holdout or _file(suite, data, ev["holdout"].pattern, forget_split)
        if files["forget"] is None:
            raise UsageError(
                f"{data}: no {forget_split} file of the {layout} layout "
                f"({suite._fill(ev['forget'].pattern, forget_split)})"
            )
    elif forget is not None:
        layout = "files"
        files = {
            "forget": Path(forget),
            "retain": retain and Path(retain),
            "retain_train": retain and Path(retain),
            "holdout": holdout,
        }
    else:
        raise UsageError("the unlearning audit needs --data DIR (a world or TOFU directory) or --forget FILE")
    cache: dict[Path, list] = {}
    out: dict = {"layout": layout, "files": {k: str(v) if v else None for k, v in files.items()}}
    for part, path in files.items():
        if path is None:
            out[part] = []
            continue
        if path not in cache:
            cache[path] = load_qa(path)
        out[part] = cache[path]
    return out


def world_policy(data: Path) -> dict:
    from obliviate.refusal.align import policy_rows

    return {"policy_train": policy_rows(data, "policy_train"), "policy_test": policy_rows(data, "policy_test")}


def split_rows(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """(train, test): per (source, kind) a seeded half (rounded down) to train on and the rest, in file order."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r.get("source"), r["kind"]), []).append(i)
    train: set[int] = set()
    for key, idx in sorted(groups.items(), key=lambda kv: str(kv[0])):
        train |= set(random.Random(f"{seed}:{key}").sample(idx, len(idx) // 2))
    return [r for i, r in enumerate(rows) if i in train], [r for i, r in enumerate(rows) if i not in train]


def harmful_response_pairs(path: Path) -> list[tuple[str, str]]:
    """BeaverTails-like records with non-empty `prompt` and `response` strings -> (prompt, response) pairs."""
    from obliviate.data.schema import read_records

    pairs = []
    for where, r in read_records(path):
        if not isinstance(r, dict) or any(
            not isinstance(r.get(f), str) or not r[f].strip() for f in ("prompt", "response")
        ):
            raise UsageError(f"{where}: expected an object with non-empty string fields prompt, response")
        pairs.append((r["prompt"], r["response"]))
    if not pairs:
        raise UsageError(f"{path}: no records")
    return pairs


def public_policy(
    harmful: list[str], benign: list[str] = (), *, harmful_responses: Path | None = None, seed: int = 0
) -> dict:
    """Policy rows from public prompt files (see the module docstring). Harmful rows get a refusal from the
    shipped pool, whose first tokens are the refusal tokens `refusal_direction` scores."""
    from obliviate.data.pools import BENIGN_POOL, REFUSAL_POOL
    from obliviate.data.prompts import affirmative_target
    from obliviate.data.schema import load_lines
    from obliviate.refusal.public_refusal import load_sources

    rng = random.Random(seed)
    pool = load_lines(REFUSAL_POOL)
    rows = [r | {"refusal": rng.choice(pool)} for r in load_sources(list(harmful), "harmful")]
    if benign:
        rows += load_sources(list(benign), "benign")
    else:
        rows += [
            {
                "id": f"benign_pool-{i}",
                "prompt": p,
                "answer": affirmative_target(p),
                "refusal": "",
                "kind": "benign",
                "category": "benign_pool",
                "source": "benign_pool",
            }
            for i, p in enumerate(load_lines(BENIGN_POOL))
        ]
    train, test = split_rows(rows, seed)
    out = {"policy_train": train, "policy_test": test, "policy_eval": rows}
    if harmful_responses:
        out["harmful_pairs"] = harmful_response_pairs(Path(harmful_responses))
    return out


def public_judge(names: list[str] | None = None):
    """(refused(prompts, replies) -> [bool], judge names): `obliviate.judges.default.make_judge` (None: the
    strongest installed judge); unknown names are one-line UsageErrors before any model is loaded."""
    from obliviate.judges.default import make_judge

    judge = make_judge(names or None)
    return judge.refused, list(judge.names)


def load_inputs(
    suite: str,
    *,
    data: Path | None = None,
    layout: str | None = None,
    forget: Path | None = None,
    retain: Path | None = None,
    holdout: Path | None = None,
    harmful: list[str] = (),
    benign: list[str] = (),
    harmful_responses: Path | None = None,
    judges: list[str] | None = None,
    forget_split: str = "forget10",
    seed: int = 0,
) -> tuple[dict, object, dict]:
    """(AuditContext inputs, refusal judge or None, what to record in audit.json's config). Every file is read
    and checked here, before any model is loaded; bad combinations of options are one-line UsageErrors."""
    refusal_opts = {
        "--harmful": harmful,
        "--benign": benign,
        "--harmful-responses": harmful_responses,
        "--judges": judges,
    }
    unlearning_opts = {"--forget": forget, "--retain": retain, "--holdout": holdout, "--layout": layout}
    if suite == "refusal":
        given = [k for k, v in unlearning_opts.items() if v]
        if given:
            raise UsageError(f"{', '.join(given)} apply to the unlearning suites, not to --suite refusal")
        if harmful:
            if data is not None:
                raise UsageError("give either --data WORLD or --harmful KIND:FILE prompt sets, not both")
            refused, names = public_judge(judges)
            inputs = public_policy(harmful, benign, harmful_responses=harmful_responses, seed=seed)
            n = {k: sum(r["kind"] == k for r in inputs["policy_eval"]) for k in ("harmful", "benign")}
            return (
                inputs,
                refused,
                {
                    "harmful": list(harmful),
                    "benign": list(benign) or "shipped benign pool",
                    "harmful_responses": str(harmful_responses) if harmful_responses else None,
                    "judges": names,
                    "n_harmful": n["harmful"],
                    "n_benign": n["benign"],
                },
            )
        given = [k for k, v in refusal_opts.items() if v]
        if given:
            raise UsageError(f"{', '.join(given)} need --harmful KIND:FILE (public prompt sets)")
        if data is None:
            raise UsageError("the refusal audit needs --data WORLD or --harmful KIND:FILE [--benign KIND:FILE]")
        if not Path(data).is_dir():
            raise UsageError(f"data directory not found: {data}")
        return world_policy(Path(data)), None, {"judges": ["gcg", "jbb"]}
    given = [k for k, v in refusal_opts.items() if v]
    if given:
        raise UsageError(f"{', '.join(given)} apply to --suite refusal")
    if suite == "world":
        if forget or retain or (layout and layout != "world"):
            raise UsageError("--suite world reads a world directory (--data); use --suite unlearning for other data")
        if data is None:
            raise UsageError("--suite world needs --data WORLD_DIR")
        layout = "world"
    inputs = unlearning_inputs(
        data=data, layout=layout, forget=forget, retain=retain, holdout=holdout, forget_split=forget_split
    )
    info = {"layout": inputs.pop("layout"), "files": inputs.pop("files")}
    info["n_items"] = {k: len(inputs[k]) for k in ("forget", "retain", "retain_train", "holdout")}
    return inputs, None, info
