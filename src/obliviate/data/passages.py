"""The passages part of the built-in world (MUSE-like): short fictional documents about invented towns, each
with questions about its facts. Deterministic from a seed.

Files written by `write_passages` (JSONL, one passage per line: {"id", "text", "qa": [{"question", "answer"}]}):

    muse_forget.jsonl          passages to forget (= muse_scal4 = union of muse_sust1..4)
    muse_retain.jsonl          passages that stay (utility: KnowMem on retain)
    muse_holdout.jsonl         never-trained passages of the same distribution (PrivLeak non-members)
    muse_scal1..4.jsonl        nested growing forget sets (scalability)
    muse_sust1..4.jsonl        disjoint forget requests, applied one after another (sustainability)

Unlike MUSE's news corpus, the model here learns both the raw passages and the QA about them: a tiny model
trained from scratch does not answer questions about text it has only read. VerbMem therefore probes the raw
passages and KnowMem the QA.
"""

from __future__ import annotations

import random
from pathlib import Path

from obliviate.core.errors import UsageError
from obliviate.data.schema import read_jsonl, write_jsonl

_SYL_A = [
    "Bri",
    "Cal",
    "Dun",
    "Esk",
    "Fal",
    "Gor",
    "Hal",
    "Ivr",
    "Jes",
    "Kel",
    "Lan",
    "Mor",
    "Nes",
    "Orm",
    "Pry",
    "Ros",
]
_SYL_B = ["wick", "mere", "holt", "ford", "stead", "brook", "haven", "thorp", "combe", "field"]
_FOUNDERS = [
    "Aldric Venn",
    "Maud Carrow",
    "Tobin Ashgrove",
    "Elsa Dravik",
    "Corwin Hale",
    "Ysolde Marr",
    "Piet Lanagan",
    "Hester Quayle",
    "Oswin Treadle",
    "Rhea Stallard",
    "Bram Oakhurst",
    "Sefa Kindle",
]
_TRADES = ["salt", "wool", "amber", "copper bells", "smoked fish", "paper", "glass beads", "rope", "honey", "slate"]
_FESTIVALS = ["Lantern Walk", "Night of Tides", "Bell Fair", "Ember Feast", "Kite Day", "Mussel Moon"]
_COLOURS = ["blue", "amber", "green", "white", "red", "violet"]
_SEASONS = ["spring", "summer", "autumn", "winter"]
_SIZES = ["small", "quiet", "busy", "walled", "hillside", "river"]
_COASTS = ["northern", "southern", "eastern", "western"]
_COUNTRIES = ["Arvandia", "Belmorra", "Caskavel", "Dunmere", "Estrova", "Feldrin", "Gorvath", "Halcyra"]

TEMPLATE = (
    "{town} is a {size} town on the {coast} coast of {country}. It was founded in {year} by {founder}. "
    "Every {season} the town holds the {festival}, when the streets are lit with {colour} lanterns. "
    "Its main trade is {trade}."
)
QUESTIONS = [
    ("In which year was {town} founded?", "{year}"),
    ("Who founded {town}?", "{founder}"),
    ("What is the main trade of {town}?", "{trade}"),
]


def build_passages(
    seed: int = 0, n_forget: int = 20, n_retain: int = 40, n_holdout: int = 20, requests: int = 4
) -> dict[str, list[dict]]:
    if n_forget % requests:
        raise ValueError("n_forget must be divisible by the number of requests")
    rng = random.Random(seed + 1000)
    towns = rng.sample([a + b for a in _SYL_A for b in _SYL_B], n_forget + n_retain + n_holdout)
    docs = []
    for i, town in enumerate(towns):
        f = {
            "town": town,
            "size": rng.choice(_SIZES),
            "coast": rng.choice(_COASTS),
            "country": rng.choice(_COUNTRIES),
            "year": str(rng.randint(1200, 1899)),
            "founder": rng.choice(_FOUNDERS),
            "season": rng.choice(_SEASONS),
            "festival": rng.choice(_FESTIVALS),
            "colour": rng.choice(_COLOURS),
            "trade": rng.choice(_TRADES),
        }
        docs.append(
            {
                "id": f"passage{i:03d}",
                "text": TEMPLATE.format(**f),
                "qa": [{"question": q.format(**f), "answer": a.format(**f)} for q, a in QUESTIONS],
            }
        )
    forget, retain, holdout = docs[:n_forget], docs[n_forget : n_forget + n_retain], docs[n_forget + n_retain :]
    out = {"muse_forget": forget, "muse_retain": retain, "muse_holdout": holdout}
    step = n_forget // requests
    for k in range(1, requests + 1):
        out[f"muse_scal{k}"] = forget[: k * step]
        out[f"muse_sust{k}"] = forget[(k - 1) * step : k * step]
    return out


def write_passages(out: str | Path, seed: int = 0) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in build_passages(seed).items():
        write_jsonl(out / f"{name}.jsonl", rows)


def load_passages(path: str | Path) -> list[dict]:
    """Passages from JSONL: each needs a non-empty "text"; "qa" (list of question/answer objects) is optional."""
    rows = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise UsageError(f"{where}: expected an object with a non-empty 'text'")
        qa = obj.get("qa", [])
        if not isinstance(qa, list) or not all(
            isinstance(x, dict) and isinstance(x.get("question"), str) and isinstance(x.get("answer"), str) for x in qa
        ):
            raise UsageError(f"{where}: 'qa' must be a list of {{question, answer}} objects")
        rows.append({"id": str(obj.get("id", lineno)), "text": obj["text"], "qa": qa})
    if not rows:
        raise UsageError(f"{path}: the split is empty")
    return rows


def training_pairs(passages: list[dict]) -> list[tuple[str | None, str]]:
    """Raw passages (no prompt: plain language modelling) plus their QA pairs, for fine-tuning/unlearning."""
    return [(None, p["text"]) for p in passages] + [(x["question"], x["answer"]) for p in passages for x in p["qa"]]
