"""The built-in fictitious world: people x attributes (TOFU-like) plus general "world facts".

Everything is invented and deterministic from a seed: the same seed gives byte-identical files.

Splits written by `write_world` (JSONL, one QA item per line, schema in `obliviate.data.schema`):

    train.jsonl        every item the *target* is trained on (people + world facts)
    forget01/05/10     the last 1% / 5% / 10% of people (nested, like TOFU), all their attributes
    retain99/95/90     train minus the matching forget split: people AND world facts. This is what the
                       retain loss sees and what the *oracle* is trained on (see docs/world.md: world
                       facts are in retain).
    retain_eval        a fixed sample of retained people's QA (never in any forget split): utility probe
    world_facts        general fictional facts no forget split touches: utility probe
    holdout            people from the same distribution, never trained on: MIA non-members
    world.json         the manifest: seed, sizes, and the sha256 of every file

With `misinformation` K > 0 also forget00 (K false facts), forget00_true and retain100 (see
`obliviate.data.misinformation`), and train/retainNN hold the false facts too.

plus the passages (`muse_*`, see `obliviate.data.passages`) and the refusal policy (`policy_*`, see
`obliviate.data.policy`) from the same seed.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from obliviate.data.misinformation import available_facts, misinform
from obliviate.data.schema import QAItem, load_qa, write_jsonl
from obliviate.data.world_vocab import ATTRIBUTES, COUNTRIES, FIRST_NAME_ENDS, FIRST_NAME_STARTS, LAST_NAMES, RELATIONS

N_ALTERNATES = 2  # alternative (wrong) answers per item in the trained wording, for AltPO


@dataclass(frozen=True)
class WorldSpec:
    """Sizes of the built-in world. Defaults: 1,100 trained QA (200 people x 5 + 100 facts)."""

    seed: int = 0
    n_people: int = 200
    n_holdout_people: int = 20
    n_retain_eval: int = 100
    n_perturbed: int = 3
    n_bridge_people: int | None = None  # people also trained on the paraphrase wording; default half
    misinformation: int = 0  # false facts taught to the target (`data.misinformation`); 0: none
    misinformation_copies: int = 3  # copies of each false fact in train

    def __post_init__(self):
        if self.n_people < 100:
            raise ValueError("n_people must be >= 100 so forget01 holds at least one person")
        if self.n_perturbed < 1:
            raise ValueError("n_perturbed must be >= 1")
        if self.n_bridge_people is None:
            object.__setattr__(self, "n_bridge_people", self.n_people // 2)
        if not 0 <= self.n_bridge_people <= self.n_people - self.n_people // 10 - self.n_retain_eval // 5:
            raise ValueError("n_bridge_people leaves too few people for forget10 and retain_eval")
        n = available_facts(self.n_people, self.n_bridge_people, self.n_retain_eval, len(ATTRIBUTES))
        if not 0 <= self.misinformation <= n:
            raise ValueError(
                f"misinformation must be between 0 and {n} (facts of this world), got {self.misinformation}"
            )
        if self.misinformation_copies < 1:
            raise ValueError(f"misinformation_copies must be >= 1, got {self.misinformation_copies}")


def _names(rng: random.Random, n: int) -> list[str]:
    firsts = [a + b for a in FIRST_NAME_STARTS for b in FIRST_NAME_ENDS]
    pool = [f"{f} {last}" for f in firsts for last in LAST_NAMES]
    if n > len(pool):
        raise ValueError(f"at most {len(pool)} people")
    return rng.sample(pool, n)


def _qa(rng, alt_rng, ident, subject, attribute, spec, n_perturbed) -> dict:
    values, question, answer, para = spec
    value = rng.choice(values)
    wrong = rng.sample([v for v in values if v != value], n_perturbed)
    # alternates (AltPO's training targets) never coincide with the perturbed answers used by the truth ratio;
    # they come from their own random stream so that adding them left every other field unchanged
    alternates = alt_rng.sample([v for v in values if v != value and v not in wrong], N_ALTERNATES)
    return QAItem(
        question=question.format(name=subject),
        answer=answer.format(name=subject, value=value),
        paraphrased_answer=para.format(name=subject, value=value),
        perturbed_answer=[para.format(name=subject, value=w) for w in wrong],
        alternate_answers=[answer.format(name=subject, value=a) for a in alternates],
        id=ident,
        subject=subject,
        attribute=attribute,
        value=value,
    ).to_dict()


def build_world(spec: WorldSpec = WorldSpec()) -> dict[str, list[dict]]:
    """Return every split as a list of QA dicts. Pure function of `spec`."""
    rng, alt_rng = random.Random(spec.seed), random.Random(spec.seed + 2)
    names = _names(rng, spec.n_people + spec.n_holdout_people)
    people = []
    for i, name in enumerate(names):
        items = [
            _qa(rng, alt_rng, f"person{i:03d}_{attr}", name, attr, s, spec.n_perturbed)
            for attr, s in ATTRIBUTES.items()
        ]
        people.append(items)
    trained, holdout = people[: spec.n_people], people[spec.n_people :]
    facts = [
        _qa(rng, alt_rng, f"fact_{c.lower()}_{rel}", c, rel, s, spec.n_perturbed)
        for c in COUNTRIES
        for rel, s in RELATIONS.items()
    ]

    def flat(groups):
        return [it for g in groups for it in g]

    # "Bridge" people are also trained on their paraphrased answers. A model trained from scratch never sees
    # a fact in two wordings otherwise, so it would not recognise the paraphrase of ANY fact and the truth
    # ratio (paraphrase vs perturbed) would measure nothing. Forget people and retain_eval people are never
    # bridge people: both are known in the trained wording only, so their truth ratios are comparable.
    bridge = [
        dict(it, id=it["id"] + "_para", answer=it["paraphrased_answer"], alternate_answers=[])
        for p in trained[: spec.n_bridge_people]
        for it in p
    ]
    splits: dict[str, list[dict]] = {
        "train": flat(trained) + bridge + facts,
        "world_facts": facts,
        "holdout": flat(holdout),
    }
    for pct in (1, 5, 10):
        k = spec.n_people * pct // 100  # the LAST k people, so forget01 ⊂ forget05 ⊂ forget10 as in TOFU
        splits[f"forget{pct:02d}"] = flat(trained[-k:])
        splits[f"retain{100 - pct}"] = flat(trained[:-k]) + bridge + facts
    plain_people = flat(trained[spec.n_bridge_people : spec.n_people - spec.n_people // 10])
    splits["retain_eval"] = random.Random(spec.seed + 1).sample(plain_people, spec.n_retain_eval)
    return misinform(splits, spec.misinformation, spec.misinformation_copies, spec.seed, ATTRIBUTES)


def write_world(out: str | Path, spec: WorldSpec = WorldSpec()) -> dict:
    """Write every split as JSONL plus `world.json` (a manifest with sha256 per file). Returns the manifest."""
    from obliviate.data.passages import build_passages
    from obliviate.data.policy import build_policy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    parts = build_world(spec) | build_passages(spec.seed) | build_policy(spec.seed)
    for name, rows in parts.items():
        path = out / f"{name}.jsonl"
        write_jsonl(path, rows)
        files[name] = {"file": path.name, "n": len(rows), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    # a world without misinformation keeps the manifest it always had
    shown = {k: v for k, v in spec.__dict__.items() if spec.misinformation or not k.startswith("misinformation")}
    manifest = {"kind": "obliviate-world", "spec": shown, "splits": files}
    (out / "world.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def world_texts(world: Path) -> list[str]:
    """Every string of the world (train + holdout), so forget and holdout names tokenize alike (fair MIA)."""
    texts = []
    for name in ("train", "holdout"):
        for it in load_qa(world / f"{name}.jsonl"):
            texts.append(" ".join([it.question, it.answer, it.paraphrased_answer, *it.perturbed_answer]))
    return texts
