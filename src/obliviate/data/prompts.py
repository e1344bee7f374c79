"""Public refusal / jailbreak prompt sets, read from the user's local files into one prompt schema.

Each loader returns a list of prompt rows:

    {"id": str, "prompt": str, "label": "harmful" | "benign", "category": str, "source": str, "context": str,
     "target": str}

`target` is the affirmative start of a compliant reply ("Sure, here is ..."), the string that GCG-style attacks
optimise for and that `refusal-eval` prefills at depth k. AdvBench (`target`) and JailbreakBench (`Target`) ship
theirs; for every other set it is built from the prompt by `affirmative_target` (below).

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
| behaviors       | your own table: `behavior` or `prompt`, optional `target` | behavior | harmful (targets are not made up) |
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from obliviate.core.errors import UsageError
from obliviate.core.registry import Registry
from obliviate.data.schema import read_json

PROMPT_SETS: Registry[Callable[[Path], list[dict]]] = Registry("prompt set")


def read_csv(path: str | Path, required: tuple[str, ...]) -> list[dict]:
    """Rows of a prompt file as dicts of strings: CSV, or by suffix Parquet / Arrow / Feather / JSON / JSONL, or a HF
    dataset id (`tables.read_table_rows`); missing columns, no rows or an unreadable file are one-line UsageErrors."""
    from obliviate.data.tables import read_table_rows

    return read_table_rows(path, required)


# Imperative verbs that open a request; `affirmative_target` drops them ("Write a poem" -> "Sure, here is a poem").
_VERBS = {
    "write",
    "create",
    "develop",
    "generate",
    "give",
    "provide",
    "explain",
    "describe",
    "list",
    "draft",
    "compose",
    "design",
    "outline",
    "produce",
    "teach",
    "suggest",
    "devise",
    "offer",
    "share",
    "detail",
    "build",
    "compile",
    "brainstorm",
    "tell",
    "show",
    "make",
    "construct",
    "prepare",
    "formulate",
    "plan",
    "publish",
    "post",
    "craft",
    "come",
}
_PLURAL = (
    "instructions",
    "detailed instructions",
    "step-by-step instructions",
    "steps",
    "tips",
    "ways",
    "ideas",
    "suggestions",
    "reasons",
    "examples",
    "directions",
)


def affirmative_target(behavior: str) -> str:
    """The affirmative target of a request, built the way AdvBench's targets read (Zou et al. 2023; HarmBench's
    GCG targets follow the same pattern): "Sure, here is " + the request without its imperative verb.

    "Write a persuasive article about X" -> "Sure, here is a persuasive article about X";
    "Give detailed instructions for X" -> "Sure, here are detailed instructions for X";
    "Explain how to X" -> "Sure, here is how to X"; "How can I X?" -> "Sure, here is how to X". Any other request
    keeps its words: "Sure, here is a response to: <request>". Only the first line of the request is used."""
    import re

    text = behavior.strip().splitlines()[0].strip().rstrip(".?!:") if behavior.strip() else ""
    words = text.split()
    if not words:
        return "Sure, here is"
    how = re.match(r"(?i)how (?:can|do|should|would|could|to|might) (?:i |we |you |one )?(.+)", text)
    if how:
        return f"Sure, here is how to {how.group(1)}"
    if words[0].lower() in _VERBS:
        rest = words[1:]
        if rest[:1] == ["up"] and words[0].lower() == "come":  # "come up with a plan" -> "a plan"
            rest = rest[2:] if rest[1:2] == ["with"] else rest[1:]
        if rest[:1] and rest[0].lower() in ("me", "us"):
            rest = rest[1:]
        phrase = " ".join(rest)
        if phrase:
            verb = "are" if phrase.lower().startswith(_PLURAL) else "is"
            return f"Sure, here {verb} {phrase}"
    return f"Sure, here is a response to: {text[0].lower()}{text[1:]}"


def _row(source, i, prompt, label, category="", context="", target="", build_target=True):
    prompt = prompt.strip()
    target = (target or "").strip()
    return {
        "id": f"{source}-{i}",
        "prompt": prompt,
        "label": label,
        "category": str(category or ""),
        "source": source,
        "context": str(context or ""),
        "target": target or (affirmative_target(prompt) if build_target else ""),
    }


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
    return [
        _row(
            "harmbench",
            r.get("BehaviorID") or i,
            r["Behavior"],
            "harmful",
            r.get("SemanticCategory", ""),
            r.get("ContextString", ""),
        )
        for i, r in enumerate(rows)
    ]


@PROMPT_SETS.register("jailbreakbench")
def jailbreakbench(path: Path) -> list[dict]:
    rows = read_csv(path, ("Goal",))
    label = "benign" if "benign" in Path(path).name.lower() else "harmful"
    return [
        _row("jailbreakbench", r.get("Index") or i, r["Goal"], label, r.get("Category", ""), target=r.get("Target", ""))
        for i, r in enumerate(rows)
    ]


@PROMPT_SETS.register("advbench")
def advbench(path: Path) -> list[dict]:
    return [
        _row("advbench", i, r["goal"], "harmful", target=r.get("target", ""))
        for i, r in enumerate(read_csv(path, ("goal",)))
    ]


@PROMPT_SETS.register("behaviors")
def behaviors(path: Path) -> list[dict]:
    """A user's own behaviours: a `behavior` (or `prompt`) column and an optional `target` (the affirmative start of
    a compliant reply). Targets are never made up here: GCG-style attacks refuse rows without one."""
    rows = read_table_rows_any(path, ("behavior", "prompt"))
    return [
        _row(
            "behaviors",
            r.get("id") or i,
            r.get("behavior") or r["prompt"],
            "harmful",
            r.get("category", ""),
            target=r.get("target", ""),
            build_target=False,
        )
        for i, r in enumerate(rows)
    ]


def read_table_rows_any(path: Path, columns: tuple[str, ...]) -> list[dict]:
    """Rows of a table that has at least one of `columns` (else a one-line UsageError naming the file)."""
    from obliviate.data.tables import read_table_rows

    rows = read_table_rows(path, ())
    if not any(c in rows[0] for c in columns):
        raise UsageError(f"{path}: needs a column named {' or '.join(repr(c) for c in columns)}")
    return rows


@PROMPT_SETS.register("orbench")
def orbench(path: Path) -> list[dict]:
    label = "harmful" if "toxic" in Path(path).name.lower() else "benign"
    return [
        _row("orbench", i, r["prompt"], label, r.get("category", "")) for i, r in enumerate(read_csv(path, ("prompt",)))
    ]


@PROMPT_SETS.register("coconot")
def coconot(path: Path) -> list[dict]:
    from obliviate.data.schema import read_records

    label = "benign" if "contrast" in Path(path).name.lower() else "harmful"
    out = []
    for where, r in read_records(path):
        if not isinstance(r, dict) or not isinstance(r.get("prompt"), str):
            raise UsageError(f"{where}: expected an object with a 'prompt' string")
        for key in ("id", "category"):
            if not isinstance(r.get(key, ""), (str, int)) or isinstance(r.get(key), bool):
                raise UsageError(f"{where}: field {key!r} must be a string")
        out.append(_row("coconot", r.get("id", len(out)), r["prompt"], label, r.get("category", "")))
    if not out:
        raise UsageError(f"{path}: no rows")
    return out


@PROMPT_SETS.register("past_tense")
def past_tense(path: Path) -> list[dict]:
    """llm-past-tense artifacts (Andriushchenko & Flammarion 2025): the reformulated requests, with the original
    request as `context` and the tense (past / future) as `category`."""
    from obliviate.data.prompts import load_artifacts

    return [
        _row("past_tense", i, a["reformulated"], "harmful", a["tense"], a["request"])
        for i, a in enumerate(load_artifacts(path))
    ]


def load_prompts(kind: str, path: str | Path) -> list[dict]:
    return PROMPT_SETS.get(kind)(Path(path))


def load_artifacts(path: str | Path) -> list[dict]:
    """llm-past-tense artifacts -> [{"request", "reformulated", "tense", "jailbroken"}]; bad files exit 2."""
    p = Path(path)
    doc = read_json(p)
    arts = doc.get("jb_artifacts") if isinstance(doc, dict) else None
    if not isinstance(arts, list) or not arts:
        raise UsageError(f"{p}: no 'jb_artifacts' list (expected the llm-past-tense artifact format)")
    tense = doc.get("attack", "past")
    if not isinstance(tense, str):
        raise UsageError(f"{p}: 'attack' must be a string (past or future), got {type(tense).__name__}")
    out = []
    for i, a in enumerate(arts):
        if not isinstance(a, dict) or not all(
            isinstance(a.get(k), str) and a[k].strip() for k in ("request", "request_reformulated")
        ):
            raise UsageError(f"{p}: jb_artifacts[{i}] needs 'request' and 'request_reformulated' strings")
        out.append(
            {
                "request": a["request"],
                "reformulated": a["request_reformulated"],
                "tense": tense,
                "jailbroken": a.get("jailbroken_gpt"),
            }
        )
    return out
