"""Training data for refusal methods from public-format files: `align METHOD --model M --harmful KIND:FILE ...`.

What each part of `RefusalData` is made of:

| part            | from                                                                                      |
|-----------------|-------------------------------------------------------------------------------------------|
| harmful prompts | `--harmful KIND:FILE` (any `obliviate prompts` set; its "harmful" rows)                   |
| refusals        | `--refusals FILE` (one per line), else the shipped pool `data/refusals.txt` (our wording), one per prompt, drawn with the seed |
| harmful answers | the prefix that DeRTa / Qi et al. cut: `--harmful-responses FILE` (BeaverTails-like `prompt`, `response` records: they replace `--harmful`), or with `--self-prefix` the model's own greedy reply after the row's affirmative target, else the affirmative target alone ("Sure, here is ...") |
| benign SFT      | `--benign-sft FILE` (Alpaca-style `instruction`, `input`, `output`), else the model's own greedy replies (self-distillation keeps utility) to `--benign KIND:FILE` prompts or, without them, to the shipped pool `data/benign_prompts.txt` (80 everyday requests, some phrased with alarming words, written for obliviate and checked for near-duplicates against XSTest) |
| utility retain  | every other benign SFT pair goes to the utility-retain part instead (a public run has no separate people facts) |

`--exclude KIND:FILE` (repeatable) drops every training prompt that nearly duplicates a prompt of those files,
so that a model is never trained on what it will be evaluated on: near-duplicate means a word-set Jaccard
similarity >= 0.4 (lower-cased alphanumeric words). AdvBench and JailbreakBench share behaviours (JBB draws
from AdvBench), and at 0.4 it drops 114 of AdvBench's 520 against HarmBench-val + JailbreakBench.

Replies generated at run time (`--self-prefix`, self-distillation) are written to the run directory
(`generated.jsonl`) and nowhere else: they may contain harmful text and never belong in a repository.
"""

from __future__ import annotations

import random
from pathlib import Path

from obliviate.core.errors import UsageError
from obliviate.data.pools import BENIGN_POOL, REFUSAL_POOL
from obliviate.data.schema import QAItem, load_lines, read_records
from obliviate.refusal.methods import RefusalData


def _records(path: Path, fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> list[dict]:
    """Records with string `fields` (non-empty) and `optional` ones; a bad record names the file and the line."""
    out = []
    for where, r in read_records(path):
        if not isinstance(r, dict) or any(not isinstance(r.get(f), str) or not r[f].strip() for f in fields):
            raise UsageError(f"{where}: expected an object with non-empty string field(s) {', '.join(fields)}")
        out.append({f: r[f] for f in fields} | {f: str(r.get(f) or "") for f in optional})
    if not out:
        raise UsageError(f"{path}: no records")
    return out


NEAR_DUPLICATE = 0.4


def _words(text: str) -> set[str]:
    import re

    return set(re.findall(r"[a-z0-9]+", text.lower()))


def drop_near_duplicates(prompts: list[str], exclude: list[str], threshold: float = NEAR_DUPLICATE) -> list[bool]:
    """keep[i]: prompt i has word-set Jaccard similarity < `threshold` with every prompt of `exclude`."""
    ex = [_words(e) for e in exclude]
    keep = []
    for p in prompts:
        w = _words(p)
        keep.append(all(len(w & e) / max(1, len(w | e)) < threshold for e in ex))
    return keep


def alpaca_pairs(path: Path) -> list[tuple[str, str]]:
    """(prompt, answer) from Alpaca records: the instruction, then the input (when present) after a blank line."""
    return [
        ((r["instruction"] + ("\n\n" + r["input"] if r["input"].strip() else "")), r["output"])
        for r in _records(path, ("instruction", "output"), ("input",))
    ]


def whole_sentences(text: str) -> str:
    """A reply cut at its last sentence end: a reply truncated by the length limit would otherwise teach the model
    to stop mid-sentence (training appends EOS after it). A reply without any sentence end is kept whole."""
    text = text.strip()
    end = max(text.rfind(c) for c in ".!?\n")
    return text[: end + 1].strip() if end > 0 else text


def public_refusal_data(
    model,
    tok,
    *,
    harmful: list[str],
    refusals: Path | None = None,
    harmful_responses: Path | None = None,
    self_prefix: bool = False,
    benign: list[str] = (),
    benign_sft: Path | None = None,
    max_prompts: int | None = None,
    exclude: list[str] = (),
    seed: int = 0,
    max_new_tokens: int = 64,
    out: Path | None = None,
) -> RefusalData:
    """Build `RefusalData` from public-format files (see the module docstring). Validates every file first."""
    from obliviate.refusal.public_refusal import load_sources, subsample_per_source

    if harmful_responses and self_prefix:
        raise UsageError("--harmful-responses and --self-prefix both give harmful prefixes; choose one")
    if not harmful and not harmful_responses:
        raise UsageError("give --harmful KIND:FILE (prompts to refuse) or --harmful-responses FILE")
    rng = random.Random(seed)
    pool = load_lines(refusals or REFUSAL_POOL)
    if harmful_responses:
        from obliviate.data.prompts import affirmative_target

        rows = [
            {
                "id": f"responses-{i}",
                "prompt": r["prompt"],
                "answer": r["response"],
                "target": affirmative_target(r["prompt"]),
                "category": r["category"] or "harmful",
            }
            for i, r in enumerate(_records(harmful_responses, ("prompt", "response"), ("category",)))
        ]
    else:
        rows = [r | {"target": r["answer"]} for r in load_sources(harmful, "harmful")]
    if exclude:
        ex = [
            r["prompt"]
            for r in load_sources(list(exclude), "harmful") + load_sources(list(exclude), "benign", allow_none=True)
        ]
        rows = [r for r, k in zip(rows, drop_near_duplicates([r["prompt"] for r in rows], ex)) if k]
        if not rows:
            raise UsageError("--exclude removed every harmful training prompt")
    rows = subsample_per_source(
        [r | {"source": r.get("source", "responses"), "kind": "harmful"} for r in rows], max_prompts
    )
    if benign_sft:
        pairs = alpaca_pairs(benign_sft)
        benign_prompts = []
    else:
        pairs = []
        benign_prompts = (
            [r["prompt"] for r in load_sources(list(benign), "benign")] if benign else load_lines(BENIGN_POOL)
        )
        if max_prompts:
            benign_prompts = benign_prompts[:max_prompts]
    generated = []
    if self_prefix or benign_prompts:
        from obliviate.models.encode import answer_ids, prompt_ids
        from obliviate.refusal.evaluate import plain_generate

        if self_prefix:  # the model's own continuation of each affirmative target: a prefix it would produce
            prefills = [answer_ids(tok, r["target"])[:-1] for r in rows]
            outs = plain_generate(model, tok, [prompt_ids(tok, r["prompt"]) for r in rows], prefills, max_new_tokens)
            for r, o in zip(rows, outs):
                r["answer"] = f"{r['target']} {o}".strip()
                generated.append({"kind": "harmful_prefix", "prompt": r["prompt"], "reply": r["answer"]})
        if benign_prompts:  # self-distillation: the model's own answers keep its behaviour on benign requests
            outs = plain_generate(model, tok, [prompt_ids(tok, p) for p in benign_prompts], None, max_new_tokens)
            kept = [(p, o) for p, o in zip(benign_prompts, map(whole_sentences, outs)) if o]
            pairs += kept
            generated += [{"kind": "benign_reply", "prompt": p, "reply": o} for p, o in kept]
    if not pairs:
        raise UsageError("no benign training pairs (the model gave empty replies to every benign prompt)")
    if out is not None and generated:
        from obliviate.data.schema import write_jsonl

        write_jsonl(Path(out) / "generated.jsonl", generated)
    harmful_rows = [
        {
            "prompt": r["prompt"],
            "answer": r["answer"],
            "refusal": rng.choice(pool),
            "category": r["category"],
            "id": r["id"],
        }
        for r in rows
    ]
    if len(pairs) < 2:
        raise UsageError("need at least 2 benign training pairs (one for the benign part, one for utility)")
    benign_rows = [{"prompt": p, "answer": a, "id": f"benign-{i}"} for i, (p, a) in enumerate(pairs) if i % 2 == 0]
    people = [QAItem(question=p, answer=a, id=f"benign-{i}") for i, (p, a) in enumerate(pairs) if i % 2 == 1]
    return RefusalData(harmful=harmful_rows, benign=benign_rows, people=people)
