"""Public refusal / jailbreak prompt sets, read from the user's local files into one prompt schema.

Each loader returns a list of prompt rows:

    {"id": str, "prompt": str, "label": "harmful" | "benign", "category": str, "source": str, "context": str}

`label` says whether a model should refuse ("harmful") or help ("benign"). Nothing is bundled or downloaded:
the files stay where the user keeps them (small public samples live in the team's shared data for tests).

| source          | file (as published)                         | prompt column | label                          |
|-----------------|---------------------------------------------|---------------|--------------------------------|
| xstest          | xstest_prompts.csv (Rottger et al. 2024)    | prompt        | `label` safe -> benign, unsafe -> harmful |
| harmbench       | harmbench_behaviors_text_*.csv (Mazeika 2024) | Behavior (+ ContextString) | harmful           |
| jailbreakbench  | JBB-Behaviors harmful/benign CSV (Chao 2024)| Goal          | harmful, or benign for the benign file |
| advbench        | harmful_behaviors.csv (Zou et al. 2023)     | goal          | harmful                        |
| orbench         | or-bench-*.csv (Cui et al. 2024)            | prompt        | harmful for or-bench-toxic, else benign |
| coconot         | CoCoNot JSONL (Brahman et al. 2024)         | prompt        | benign for the contrast set, else harmful |
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

from obliviate.errors import UsageError
from obliviate.registry import Registry

PROMPT_SETS: Registry[Callable[[Path], list[dict]]] = Registry("prompt set")


def read_csv(path: str | Path, required: tuple[str, ...]) -> list[dict]:
    """Rows of a prompt file as dicts of strings: CSV, or by suffix Parquet / Arrow / Feather / JSON / JSONL, or a HF
    dataset id (`tables.read_table_rows`); missing columns, no rows or an unreadable file are one-line UsageErrors."""
    from obliviate.data.tables import read_table_rows

    return read_table_rows(path, required)


def _row(source, i, prompt, label, category="", context=""):
    return {"id": f"{source}-{i}", "prompt": prompt.strip(), "label": label, "category": category or "",
            "source": source, "context": context or ""}


@PROMPT_SETS.register("xstest")
def xstest(path: Path) -> list[dict]:
    rows = read_csv(path, ("prompt", "label"))
    labels = {"safe": "benign", "unsafe": "harmful"}
    out = []
    for i, r in enumerate(rows, 2):  # line 1 is the header
        if r["label"] not in labels:
            raise UsageError(f"{path}:{i}: label must be 'safe' or 'unsafe', got {r['label']!r}")
        out.append(_row("xstest", r.get("id") or i, r["prompt"], labels[r["label"]], r.get("type", "")))
    return out


@PROMPT_SETS.register("harmbench")
def harmbench(path: Path) -> list[dict]:
    rows = read_csv(path, ("Behavior",))
    return [_row("harmbench", r.get("BehaviorID") or i, r["Behavior"], "harmful", r.get("SemanticCategory", ""),
                 r.get("ContextString", "")) for i, r in enumerate(rows)]


@PROMPT_SETS.register("jailbreakbench")
def jailbreakbench(path: Path) -> list[dict]:
    rows = read_csv(path, ("Goal",))
    label = "benign" if "benign" in Path(path).name.lower() else "harmful"
    return [_row("jailbreakbench", r.get("Index") or i, r["Goal"], label, r.get("Category", ""))
            for i, r in enumerate(rows)]


@PROMPT_SETS.register("advbench")
def advbench(path: Path) -> list[dict]:
    return [_row("advbench", i, r["goal"], "harmful") for i, r in enumerate(read_csv(path, ("goal",)))]


@PROMPT_SETS.register("orbench")
def orbench(path: Path) -> list[dict]:
    label = "harmful" if "toxic" in Path(path).name.lower() else "benign"
    return [_row("orbench", i, r["prompt"], label, r.get("category", ""))
            for i, r in enumerate(read_csv(path, ("prompt",)))]


@PROMPT_SETS.register("coconot")
def coconot(path: Path) -> list[dict]:
    from obliviate.data.schema import read_records

    label = "benign" if "contrast" in Path(path).name.lower() else "harmful"
    out = []
    for where, r in read_records(path):
        if not isinstance(r, dict) or not isinstance(r.get("prompt"), str):
            raise UsageError(f"{where}: expected an object with a 'prompt' string")
        out.append(_row("coconot", r.get("id", len(out)), r["prompt"], label, r.get("category", "")))
    if not out:
        raise UsageError(f"{path}: no rows")
    return out


@PROMPT_SETS.register("past_tense")
def past_tense(path: Path) -> list[dict]:
    """llm-past-tense artifacts (Andriushchenko & Flammarion 2025): the reformulated requests, with the original
    request as `context` and the tense (past / future) as `category`."""
    from obliviate.attacks.tense import load_artifacts

    return [_row("past_tense", i, a["reformulated"], "harmful", a["tense"], a["request"])
            for i, a in enumerate(load_artifacts(path))]


def load_prompts(kind: str, path: str | Path) -> list[dict]:
    return PROMPT_SETS.get(kind)(Path(path))
