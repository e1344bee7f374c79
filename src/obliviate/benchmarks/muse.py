"""MUSE scorers (Shi et al. 2025, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models", sec. 3)."""

from __future__ import annotations

import statistics

from rouge_score import rouge_scorer

_F1 = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l_f1(reference: str, prediction: str) -> float:
    """ROUGE-L F-measure (Lin 2004), unstemmed, as MUSE scores VerbMem and KnowMem."""
    return _F1.score(reference, prediction)["rougeL"].fmeasure


def verbmem(model, tok, passages: list[dict], prefix_tokens: int = 16, max_new_tokens: int = 64) -> float:
    from obliviate.engine.generation import generate
    from obliviate.models.encode import text_ids

    prompts, truths = [], []
    for p in passages:
        ids = text_ids(tok, p["text"])
        prompts.append(ids[:prefix_tokens])
        truths.append(tok.decode(ids[prefix_tokens : prefix_tokens + max_new_tokens], skip_special_tokens=True))
    outs = generate(model, tok, prompts, max_new_tokens=max_new_tokens)
    return statistics.fmean(rouge_l_f1(t.strip(), o) for t, o in zip(truths, outs))


def knowmem(model, tok, passages: list[dict], max_new_tokens: int = 32) -> float:
    from obliviate.engine.generation import generate
    from obliviate.models.encode import prompt_ids

    qa = [x for p in passages for x in p["qa"]]
    outs = generate(model, tok, [prompt_ids(tok, x["question"]) for x in qa], max_new_tokens=max_new_tokens)
    return statistics.fmean(rouge_l_f1(x["answer"], o) for x, o in zip(qa, outs))


def mink_auc(model, tok, forget: list[dict], holdout: list[dict]) -> float:
    from obliviate.engine.evaluate import _forward_stats
    from obliviate.metrics.mia import mia_auc, mink_score
    from obliviate.models.encode import encode_pair

    def scores(ps):
        stats = _forward_stats(model, [encode_pair(tok, None, p["text"]) for p in ps], tok.pad_token_id, 32)
        return [mink_score(s["token_logps"]) for s in stats]

    return mia_auc(scores(forget), scores(holdout))


def muse_scores(model, tok, data: dict, oracle_auc: float | None = None) -> dict:
    from obliviate.metrics.mia import privleak

    out = {
        "verbmem_forget": verbmem(model, tok, data["muse_forget"]),
        "knowmem_forget": knowmem(model, tok, data["muse_forget"]),
        "knowmem_retain": knowmem(model, tok, data["muse_retain"]),
        "mink_auc": mink_auc(model, tok, data["muse_forget"], data["muse_holdout"]),
    }
    if oracle_auc is not None:
        out["privleak"] = privleak(out["mink_auc"], oracle_auc)
    return {k: v for k, v in out.items() if v is not None}
