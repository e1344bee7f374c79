"""Evaluation: one teacher-forced forward pass per sequence, plus batched greedy generation.

For every QA item the answer, its paraphrase and each perturbed answer are scored once; from the true
answer's pass come the token log-probs (probability, MIA LOSS / zlib / Min-K%), the Min-K%++ z-scores,
and the greedy teacher-forced predictions (exact memorisation, extraction strength). Generation gives
ROUGE-L recall and attribute-value hits. Every metric in `obliviate.metrics` derives from these rows.
"""

from __future__ import annotations

import torch

from obliviate.data.schema import QAItem
from obliviate.generation import generate
from obliviate.metrics import compute_all
from obliviate.metrics.mia import minkpp_token_z
from obliviate.metrics.tofu import rouge_l_recall
from obliviate.models.encode import IGNORE, collate, encode_pair, prompt_ids

# The splits an evaluation reads from a world directory, and what each is for.
EVAL_SPLITS = ("forget", "retain", "world_facts", "holdout")


@torch.no_grad()
def _forward_stats(model, encoded: list, pad: int, batch_size: int, texts: list[str] | None = None) -> list[dict]:
    """Per sequence: mean NLL over answer tokens, token log-probs, Min-K%++ z-scores, greedy predictions.
    Guards attached to the model (`obliviate.guards.attach`) apply their prefill-time hooks to the prompt tokens
    (`texts[i]` is sequence i's request text), as generation does."""
    from obliviate.generation import Row, prefill_embeddings
    from obliviate.guards import attached

    guards = attached(model)
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    out: list[dict] = [{}] * len(encoded)
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in idx], pad).items()}
        if guards:
            prompt = (batch["labels"] == IGNORE) & (batch["attention_mask"] == 1)
            rows = [Row(i, texts[i] if texts else None) for i in idx]
            embeds = prefill_embeddings(model, guards, batch["input_ids"], prompt, rows)
            logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits[:, :-1]
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE
        logp = torch.log_softmax(logits.float(), -1)  # computed once, shared below [B, T-1, V]
        targets = labels.clamp(min=0)
        tok = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # token log-probs    [B, T-1]
        z = minkpp_token_z(logp, targets)  # Min-K%++ per-token z-scores             [B, T-1]
        pred = logits.argmax(-1)
        for r, i in enumerate(idx):
            m = mask[r]
            lp = tok[r][m]
            out[i] = {
                "loss": float(-lp.mean()),
                "token_logps": lp.tolist(),
                "token_z": z[r][m].tolist(),
                "pred_ids": pred[r][m].tolist(),
                "target_ids": labels[r][m].tolist(),
            }
    return out


def score_split(model, tokenizer, items: list[QAItem], *, batch_size: int = 64, max_new_tokens: int = 48,
                max_len: int = 512) -> list[dict]:
    """Per-sample rows for one split (see the module docstring)."""
    seqs, owner = [], []  # owner[k] = (item index, "gt" | "para" | perturbed index)
    for i, it in enumerate(items):
        seqs.append(encode_pair(tokenizer, it.question, it.answer, max_len))
        owner.append((i, "gt"))
        if it.paraphrased_answer:
            seqs.append(encode_pair(tokenizer, it.question, it.paraphrased_answer, max_len))
            owner.append((i, "para"))
        for j, p in enumerate(it.perturbed_answer):
            seqs.append(encode_pair(tokenizer, it.question, p, max_len))
            owner.append((i, j))
    stats = _forward_stats(model, seqs, tokenizer.pad_token_id, batch_size,
                           texts=[items[i].question for i, _ in owner])
    texts = generate(model, tokenizer, [prompt_ids(tokenizer, it.question) for it in items], max_new_tokens,
                     batch_size, texts=[it.question for it in items])
    rows = [{"id": it.id, "question": it.question, "answer": it.answer, "value": it.value,
             "generated": texts[i], "rouge_l_recall": rouge_l_recall(it.answer, texts[i]),
             "value_hit": bool(it.value) and it.value.lower() in texts[i].lower(),
             "perturbed_loss": []} for i, it in enumerate(items)]
    for (i, kind), st in zip(owner, stats):
        if kind == "gt":
            rows[i].update({"gt_loss": st["loss"], **{k: st[k] for k in ("token_logps", "token_z", "pred_ids",
                                                                            "target_ids")}})
        elif kind == "para":
            rows[i]["paraphrased_loss"] = st["loss"]
        else:
            rows[i]["perturbed_loss"].append(st["loss"])
    return rows


def score_model(model, tokenizer, data: dict[str, list[QAItem]], **kw) -> dict[str, list[dict]]:
    """`score_split` rows of every split, scored as one union: the splits are small (a few dozen questions each),
    so one set of batches for all of them costs little more than one split's (see bench/real_scale.py eval)."""
    rows = score_split(model, tokenizer, [it for items in data.values() for it in items], **kw)
    out, start = {}, 0
    for split, items in data.items():
        out[split], start = rows[start: start + len(items)], start + len(items)
    return out


def metrics_from_rows(rows: dict[str, list[dict]], oracle_rows: dict[str, list[dict]] | None = None) -> dict:
    return compute_all({**rows, "oracle": oracle_rows})


# Token-level fields stay in memory; samples.jsonl keeps one readable summary per item.
_TOKEN_FIELDS = ("token_logps", "token_z", "pred_ids", "target_ids")


def sample_rows(run: str, rows: dict[str, list[dict]]) -> list[dict]:
    from obliviate.metrics.mia import SCORES
    from obliviate.metrics.tofu import truth_ratios

    out = []
    for split, split_rows in rows.items():
        for r in split_rows:
            s = {k: v for k, v in r.items() if k not in _TOKEN_FIELDS}
            if r.get("perturbed_loss") and "paraphrased_loss" in r:
                s["truth_ratio"] = float(truth_ratios([r["paraphrased_loss"]], [r["perturbed_loss"]])[0])
            s.update({f"mia_{name}": f(r) for name, f in SCORES.items()})
            out.append({"run": run, "split": split, **s})
    return out
