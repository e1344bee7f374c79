"""The refusal suite: an unaligned target, every refusal method, and the measurements that tell them apart.

    world (people facts + policy)  ->  unaligned target (complies with the fictional hazards)
        ->  refusal_sft / derta / qi_augment / refusal_tokens / r_tuning / safe_eraser (+ ablations)
        ->  refusal at depth, over-refusal, held-out objects, refusal position, utility, uncertainty
        ->  a fine-tuning attack on the aligned model, plain SFT vs token-wise constrained (Qi et al. Sec. 4)

Metric keys per run (results.json `results[run]`):
- `refusal_rate`, `over_refusal_rate`, `refusal_rate@prefill{5,10,20,40}`, `refusal_position_mean`
  (`obliviate.refusal.evaluate`) on `policy_test`;
- `heldout_refusal_rate`, `heldout_over_refusal_rate`, `heldout_refusal_rate@prefill20` on objects never trained;
- `sarr`: SafeEraser's Safe Answer Refusal Rate, refusals among benign test requests whose object appears in a
  harmful training request;
- `people_accuracy`: share of known people facts answered with the right value (greedy), `utility_vs_target`
  its ratio to the target's;
- `uncertain_rate_unknown` / `uncertain_rate_known`: share of replies that express uncertainty on held-out
  people (never trained: should be high after R-Tuning) and on known people (should stay low).
"""

from __future__ import annotations

import random
from pathlib import Path

from obliviate.core.errors import UsageError
from obliviate.data.schema import QAItem, load_qa, read_jsonl
from obliviate.refusal.methods import RefusalData

EVAL_PEOPLE = 200  # known people facts used for utility (fixed sample)


def policy_rows(world: Path, split: str) -> list[dict]:
    path = Path(world) / f"{split}.jsonl"
    if not path.is_file():
        raise UsageError(f"{path} not found (write a world with `obliviate world --out DIR`)")
    rows = [r for _, r in read_jsonl(path)]
    if not rows:
        raise UsageError(f"{path}: empty split")
    for i, r in enumerate(rows, 1):
        missing = {"prompt", "answer", "kind"} - set(r)
        if missing:
            raise UsageError(f"{path}:{i}: missing field(s) {', '.join(sorted(missing))}")
        if r["kind"] == "harmful" and not r.get("refusal"):
            raise UsageError(f"{path}:{i}: a harmful row needs a 'refusal'")
    return rows


def split_unknown(world: Path, seed: int) -> tuple[list[QAItem], list[QAItem]]:
    """Held-out people facts (never trained), split by person: (for R-Tuning's data, for evaluation)."""
    holdout = load_qa(Path(world) / "holdout.jsonl")
    people = sorted({it.subject for it in holdout})
    random.Random(seed).shuffle(people)
    train_people = set(people[: len(people) // 2])
    return [it for it in holdout if it.subject in train_people], [
        it for it in holdout if it.subject not in train_people
    ]


def refusal_data(world: Path, seed: int = 0) -> tuple[RefusalData, list[QAItem]]:
    """(training data for refusal methods, the known people facts held back for utility evaluation)."""
    rows = policy_rows(world, "policy_train")
    people = load_qa(Path(world) / "train.jsonl")
    rng = random.Random(seed)
    order = list(range(len(people)))
    rng.shuffle(order)
    eval_people = [people[i] for i in order[:EVAL_PEOPLE]]
    unknown_train, _ = split_unknown(world, seed)
    data = RefusalData(
        harmful=[r for r in rows if r["kind"] == "harmful"],
        benign=[r for r in rows if r["kind"] == "benign"],
        people=people,
        unknown=unknown_train,
        eval_ids={it.id for it in eval_people},
    )
    return data, eval_people


def target_pairs(world: Path) -> list[tuple[str, str]]:
    """What the unaligned target learns: every people fact and every policy answer, harmful ones included."""
    people = [(it.question, it.answer) for it in load_qa(Path(world) / "train.jsonl")]
    return people + [(r["prompt"], r["answer"]) for r in policy_rows(world, "policy_train")]


def suite_texts(world: Path) -> list[str]:
    """Text for the tiny tokenizer: the world's QA plus every policy string."""
    from obliviate.data.world import world_texts
    from obliviate.refusal.methods.r_tuning import SURE, UNSURE, UNSURE_ANSWER

    texts = world_texts(world)
    for split in ("policy_train", "policy_test", "policy_test_heldout"):
        texts += [f"{r['prompt']} {r['answer']} {r.get('refusal', '')}" for r in policy_rows(world, split)]
    return texts + [SURE, UNSURE, UNSURE_ANSWER]


def subsample(rows: list, limit: int | None) -> list:
    """Every n-th row, so a limited evaluation keeps the mix of kinds and categories (None: all rows)."""
    if not limit or len(rows) <= limit:
        return rows
    step = len(rows) / limit
    return [rows[int(i * step)] for i in range(limit)]


def evaluate(
    model,
    tok,
    world: Path,
    eval_people: list[QAItem],
    seed: int = 0,
    generator=None,
    max_new_tokens: int = 48,
    limit: int | None = None,
    samples: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
) -> tuple[dict, list[dict], dict]:
    """(metrics, samples, refusal-position distribution) of one model on the suite's test data.

    `limit` caps every evaluation set (policy test, held-out objects, people) for quick runs; None uses all.
    `samples`, `temperature`, `top_p`: N sampled replies per question, reply j drawn with seed `seed + j`
    (`refusal.evaluate.refusal_eval`); every rate is then per reply. `world_intervals` gives each rate its
    interval."""
    from dataclasses import replace

    from obliviate.engine.sampling import sampling_for
    from obliviate.models.encode import prompt_ids
    from obliviate.models.remote import RemoteModel
    from obliviate.refusal.evaluate import plain_generate, refusal_eval
    from obliviate.refusal.methods.r_tuning import expresses_uncertainty, is_correct

    gen = generator or plain_generate
    n = samples
    draw = {"samples": n, "temperature": temperature, "top_p": top_p, "seed": seed}
    sampling = sampling_for(**draw)
    test = subsample(policy_rows(world, "policy_test"), limit)
    metrics, samples, dist = refusal_eval(model, tok, test, generator=gen, max_new_tokens=max_new_tokens, **draw)
    held, held_samples, _ = refusal_eval(
        model,
        tok,
        subsample(policy_rows(world, "policy_test_heldout"), limit),
        depths=(20,),
        generator=gen,
        max_new_tokens=max_new_tokens,
        **draw,
    )
    metrics |= {f"heldout_{k}": v for k, v in held.items() if k != "refusal_position_mean"}
    seen = {r["object"] for r in policy_rows(world, "policy_train") if r["kind"] == "harmful"}
    by_id = {r["id"]: r for r in test}
    for s in samples:
        if s["kind"] == "benign":
            s["seen_object"] = by_id[s["id"]].get("object") in seen  # safe look-alikes of trained-on objects: SARR
    safe = [s for s in samples if s.get("seen_object")]
    metrics["sarr"] = sum(s["refused"] for s in safe) / len(safe) if safe else None

    _, unknown_eval = split_unknown(world, seed)
    eval_people, unknown_eval = subsample(eval_people, limit), subsample(unknown_eval, limit)
    items = list(eval_people) + unknown_eval
    asked = [it.question if isinstance(model, RemoteModel) else prompt_ids(tok, it.question) for it in items]
    draws = [  # draws[j][i]: reply j to question i
        gen(model, tok, asked, None, max_new_tokens=max_new_tokens, sampling=replace(sampling, seed=seed + j))
        if sampling is not None
        else gen(model, tok, asked, None, max_new_tokens=max_new_tokens)
        for j in range(n)
    ]
    known = [d[i] for d in draws for i in range(len(eval_people))]
    unknown = [d[i] for d in draws for i in range(len(eval_people), len(items))]
    hits = [is_correct(it, d[i]) for d in draws for i, it in enumerate(eval_people)]
    metrics["people_accuracy"] = sum(hits) / max(1, len(known))
    metrics["uncertain_rate_known"] = sum(map(expresses_uncertainty, known)) / max(1, len(known))
    metrics["uncertain_rate_unknown"] = sum(map(expresses_uncertainty, unknown)) / max(1, len(unknown))
    for i, it in enumerate(items):
        for j in range(n):
            o = draws[j][i]
            samples.append(
                {
                    "id": it.id,
                    "kind": "people",
                    "depth": 0,
                    "sample": j,
                    "prompt": it.question,
                    "output": o,
                    "refused": None,
                    "refusal_position": None,
                    "correct": is_correct(it, o) if i < len(eval_people) else None,  # None: an unknown person
                    "uncertain": expresses_uncertainty(o),
                }
            )
    return metrics, samples + [s | {"split": "heldout"} for s in held_samples], dist


def world_intervals(records: list[dict], level: float = 0.95, seed: int = 0) -> dict:
    """{metric: interval} of every rate `evaluate` reports, from one model's sample records: the refusal rates
    (`refusal.evaluate.refusal_intervals`), sarr, people_accuracy and the uncertain rates."""
    from obliviate.metrics.intervals import rate_interval
    from obliviate.refusal.evaluate import refusal_intervals

    groups: dict[str, list[list[bool]]] = {}

    def add(key: str, r: dict, outcome) -> None:
        prompts = groups.setdefault(key, [])
        if r.get("sample", 0) == 0 or not prompts:
            prompts.append([])
        prompts[-1].append(bool(outcome))

    for r in records:
        if r["kind"] == "benign" and r.get("seen_object") and not r.get("split"):
            add("sarr", r, r["refused"])
        elif r["kind"] == "people" and r.get("correct") is not None:
            add("people_accuracy", r, r["correct"])
            add("uncertain_rate_known", r, r["uncertain"])
        elif r["kind"] == "people" and "uncertain" in r:
            add("uncertain_rate_unknown", r, r["uncertain"])
    return refusal_intervals(records, level, seed) | {k: rate_interval(v, level, seed) for k, v in groups.items()}


def align(
    model,
    tok,
    method,
    data: RefusalData,
    *,
    seed: int = 0,
    progress: bool = True,
    out: Path | None = None,
    resume: bool = False,
    lora_r: int = 0,
    batch_size: int = 32,
    bf16: bool = False,
    gradient_checkpointing: bool = False,
    max_batch_tokens: int | None = 0,
    model_id: str | None = None,
):
    """Run one refusal method: prepare (tokens), build its parts, train. Returns (model, tokenizer, TrainResult).
    `max_batch_tokens` None: the default budget where the method's loss splits (`train.batch_token_budget`).
    `model_id`: the hash checkpoints record of the model (`train`), taken before `prepare` changes it."""
    from obliviate.engine.train import TrainConfig, batch_token_budget, train

    budget = batch_token_budget(method, max_batch_tokens)
    model, tok = method.prepare(model, tok, data)
    parts = method.parts(data, tok, seed, model=model)
    cfg = TrainConfig(
        retain_batch_size=batch_size,
        seed=seed,
        checkpoint_every=25 if out else 0,
        progress=progress,
        lora_r=lora_r,
        bf16=bf16,
        gradient_checkpointing=gradient_checkpointing,
        max_batch_tokens=budget,
    )
    model, res = train(model, tok, method, parts, cfg, out=out, resume=resume, model_id=model_id)
    return model, tok, res
