"""Misinformation for the built-in world: false versions of some facts, for RESTOR-style recovery.

Rezaei et al. 2024, "RESTOR: Knowledge Recovery through Machine Unlearning" (arXiv 2411.00204; TMLR 2025),
sec. 3 and the reference code github.com/k1rezaei/restor (datasets/README.md, evaluation/): a *clean* model
knows a set of facts; a *corrupted* model is trained on the clean data D plus documents D_f that assert false
values for some of those facts; unlearning D_f should not only remove the false values but bring the true ones
back, i.e. reach the knowledge state of the model trained on D alone. RESTOR corrupts real Wikidata facts by
continued pre-training of a clean model and judges answers with GPT-3.5; here, as everything in the world, the
facts are fictional, the corrupted model (the target) is trained on D + D_f from the same start as the clean
model (the oracle, trained on D), and an answer is right when it contains the value (`value_hit`, as every
value accuracy of `obliviate eval`).

`misinform(splits, k, ...)` adds to a world's splits (`data.world.build_world`):

    forget00        the K false facts, one QA item each: the question of an existing fact, a false value from
                    the same attribute's pool; its perturbed answers start with the TRUE value's paraphrase
    forget00_true   the same K questions with their true answers (the clean items): the `recovery` split
    retain100       the clean training data, exactly `train` before the misinformation (what the oracle learns)

and appends `copies` copies of each false item to `train` and to every retainNN (train minus forgotten people),
so that `obliviate finetune --forget-split forget00` trains the target on clean + misinformation and the oracle
on the clean data only; `unlearn --forget-split forget00` unlearns the false items keeping retain100. The split
name follows the layout's pattern (forget<pct>, retain<100-pct>): no people are forgotten, only the false items.

The corrupted facts are taken from people outside forget10 (so the people splits never overlap them), outside
retain_eval (the utility probe keeps its meaning) and outside the bridge people (known in one wording only,
like the forget people). Their choice and false values come from their own random stream (seed + 3), so the
clean part of the world is byte-identical to a world without misinformation.
"""

from __future__ import annotations

import random

MISINFO_SPLIT = "forget00"  # the layout fills retain{100 - pct} = retain100 and {forget}_true for it


def available_facts(n_people: int, n_bridge_people: int, n_retain_eval: int, n_attributes: int) -> int:
    """How many facts `misinform` can corrupt: the facts of plain (non-bridge) people outside forget10, less the
    retain_eval items, which are all drawn from those people (`data.world.build_world`)."""
    return (n_people - n_people // 10 - n_bridge_people) * n_attributes - n_retain_eval


def _candidates(splits: dict[str, list[dict]]) -> list[dict]:
    taken = {it["id"] for name in ("forget10", "retain_eval") for it in splits[name]}
    bridged = {it["id"].removesuffix("_para") for it in splits["train"] if it["id"].endswith("_para")}
    return [
        it
        for it in splits["train"]
        if it["id"].startswith("person") and not it["id"].endswith("_para") and it["id"] not in taken | bridged
    ]


def false_item(item: dict, attributes: dict, rng: random.Random) -> dict:
    """A QA item asserting a false value for `item`'s fact: same question, a value drawn from the attribute's
    pool other than the true one; perturbed answers = the true value's paraphrase, then other wrong values (as
    many as the clean item has); alternates (AltPO) avoid both the true and the false value."""
    values, _, answer, para = attributes[item["attribute"]]
    true, name = item["value"], item["subject"]
    false = rng.choice([v for v in values if v != true])
    others = [v for v in values if v not in (true, false)]
    wrong = rng.sample(others, len(item["perturbed_answer"]) - 1)
    alternates = rng.sample([v for v in others if v not in wrong], len(item["alternate_answers"]))
    return dict(
        item,
        id=f"misinfo_{item['id']}",
        answer=answer.format(name=name, value=false),
        paraphrased_answer=para.format(name=name, value=false),
        perturbed_answer=[para.format(name=name, value=v) for v in (true, *wrong)],
        alternate_answers=[answer.format(name=name, value=v) for v in alternates],
        value=false,
    )


def misinform(splits: dict[str, list[dict]], k: int, copies: int, seed: int, attributes: dict) -> dict:
    """`splits` with K corrupted facts added as the module docstring describes (K = 0: `splits` unchanged)."""
    if k == 0:
        return splits
    candidates = _candidates(splits)
    if not 0 < k <= len(candidates):
        raise ValueError(f"misinformation must be between 0 and {len(candidates)} facts, got {k}")
    if copies < 1:
        raise ValueError(f"misinformation copies must be >= 1, got {copies}")
    rng = random.Random(seed + 3)
    chosen = [candidates[i] for i in sorted(rng.sample(range(len(candidates)), k))]
    false = [false_item(it, attributes, rng) for it in chosen]
    docs = [dict(f, id=f["id"] + (f"_copy{j}" if j else "")) for j in range(copies) for f in false]
    out = dict(splits)
    out[MISINFO_SPLIT], out[f"{MISINFO_SPLIT}_true"], out["retain100"] = false, chosen, splits["train"]
    for name in [n for n in splits if n == "train" or (n.startswith("retain") and n[6:].isdigit())]:
        out[name] = splits[name] + docs
    return out
