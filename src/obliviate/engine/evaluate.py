"""Evaluation: teacher-forced passes that share each question's prompt, plus batched greedy generation.

For every QA item the answer, its paraphrase and each perturbed answer are scored once, as continuations of
one pass over the item's prompt (the chat prompt is most of each sequence's tokens); from the true
answer's pass come the token log-probs (probability, MIA LOSS / zlib / Min-K%), the Min-K%++ z-scores,
and the greedy teacher-forced predictions (exact memorisation, extraction strength). Generation gives
ROUGE-L recall and attribute-value hits. Every metric in `obliviate.metrics` derives from these rows.
"""

from __future__ import annotations

import torch

from obliviate.data.schema import QAItem
from obliviate.engine.generation import generate
from obliviate.metrics import compute_all
from obliviate.metrics.klom import distribution_metrics, mean_metrics
from obliviate.metrics.mia import minkpp_token_z
from obliviate.metrics.tofu import rouge_l_recall
from obliviate.models.encode import (
    IGNORE,
    answer_ids,
    collate,
    encode_pair,
    last_logits_only,
    logits_runs,
    prompt_ids,
    scored_window,
    sequence_logp,
)

# The splits an evaluation reads from a world directory, and what each is for.
EVAL_SPLITS = ("forget", "retain", "world_facts", "holdout")


def _stats(logits, labels, detail) -> list[dict]:
    """Per row of `logits` [B, T, V] (position t predicts `labels[:, t]`, IGNORE where nothing is scored): the mean
    NLL over scored tokens, and for rows with `detail[b]` the token log-probs, Min-K%++ z-scores, greedy
    predictions and targets."""
    mask = labels != IGNORE
    targets = labels.clamp(min=0)
    out = []
    for b in range(len(logits)):
        m = mask[b]
        logp = torch.log_softmax(logits[b][m].float(), -1)  # scored positions only      [n, V]
        t = targets[b][m]
        lp = logp.gather(-1, t[:, None])[:, 0]  # token log-probs                           [n]
        row = {"loss": float(-lp.mean())}
        if detail[b]:
            row.update(
                token_logps=lp.tolist(),
                token_z=minkpp_token_z(logp, t).tolist(),
                pred_ids=logp.argmax(-1).tolist(),
                target_ids=t.tolist(),
            )
        out.append(row)
    return out


@torch.no_grad()
def _forward_stats(model, encoded: list, pad: int, batch_size: int, texts: list[str] | None = None) -> list[dict]:
    """Per sequence: mean NLL over answer tokens, token log-probs, Min-K%++ z-scores, greedy predictions.
    Guards attached to the model (`obliviate.engine.hooks.attach`) apply their prefill-time hooks to the prompt tokens
    (`texts[i]` is sequence i's request text), and their router edits (`edit_routing`) to every token, as
    generation does."""
    from obliviate.engine.hooks import attached, routing_hooks

    guards = attached(model)
    with routing_hooks(model, guards):
        return _guarded_forward_stats(model, guards, encoded, pad, batch_size, texts)


def _guarded_forward_stats(model, guards, encoded, pad, batch_size, texts) -> list[dict]:
    from obliviate.engine.generation import Row, prefill_embeddings

    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    out: list[dict] = [{}] * len(encoded)
    # runs of at most batch_size rows and 2^28 logits: long documents (MUSE's) would build [64, 511, V] at once
    for idx in logits_runs(model, order, batch_size, lambda i: len(encoded[i][0])):
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in idx], pad).items()}
        # logits from the batch's first scored position only (as `token_logps`): not [B, T, V] over the prompts
        labels, keep, kw = scored_window(model, batch["labels"])
        if guards:
            prompt = (batch["labels"] == IGNORE) & (batch["attention_mask"] == 1)
            rows = [Row(i, texts[i] if texts else None) for i in idx]
            embeds = prefill_embeddings(model, guards, batch["input_ids"], prompt, rows)
            logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], **kw).logits
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kw).logits
        for i, row in zip(idx, _stats(logits[:, -keep:][:, :-1], labels, [True] * len(idx))):  # [B, S, V]
            out[i] = row
    return out


@torch.no_grad()
def _shared_prompt_stats(model, groups: list[tuple[list[int], list[list[int]]]], pad: int) -> list[list[dict]]:
    """`_forward_stats` of each group's answers (a group: one prompt and its K answers), with each prompt run once.
    The prompts are left-padded into one batch (position ids from the mask, as the decode loop builds them) whose
    pass fills a KV cache; each cache row is repeated once per answer of its group, and every answer of every
    group runs as one batch of continuations. Full details (log-probs, Min-K%++, predictions) for each group's
    first answer, the true one; the others need their loss. Equal to full-sequence passes up to fp32 rounding
    (tests/engine/test_evaluate.py)."""
    from transformers import DynamicCache

    from obliviate.engine.generation import _positions, left_pad

    device = next(model.parameters()).device
    ids, mask = left_pad([p for p, _ in groups], pad, device)  # [G, P]
    cache = DynamicCache(config=model.config)  # as the decode loop builds it (sliding-window layers included)
    first = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=_positions(mask),
        cache=cache,
        use_cache=True,
        **last_logits_only(model),
    ).logits[:, -1:]  # predicts each answer's first token                   [G, 1, V]
    rows = [(g, a) for g, (_, answers) in enumerate(groups) for a in answers]
    owner = torch.tensor([g for g, _ in rows], device=device)
    R, A = len(rows), max(len(a) for _, a in rows)
    a_ids = torch.full((R, A), pad, dtype=torch.long, device=device)
    labels = torch.full((R, A), IGNORE, dtype=torch.long, device=device)
    a_mask = torch.zeros((R, A), dtype=torch.long, device=device)
    for r, (_, a) in enumerate(rows):
        a_ids[r, : len(a)] = labels[r, : len(a)] = torch.tensor(a)
        a_mask[r, : len(a)] = 1  # right padding: never attended to by the answer's own tokens (causal)
    logits = first[owner]  #                                                                  [R, 1, V]
    if A > 1:
        cache.reorder_cache(owner)  # row r continues its group's prompt (every layer kind: KV, conv, recurrent)
        full_mask = torch.cat([mask[owner], a_mask[:, :-1]], 1)
        more = model(
            input_ids=a_ids[:, :-1],
            attention_mask=full_mask,
            position_ids=_positions(full_mask)[:, -(A - 1) :],
            cache=cache,
            use_cache=True,
        ).logits
        logits = torch.cat([logits, more], 1)  # position j predicts a_ids[:, j]                  [R, A, V]
    stats = _stats(logits, labels, [r == 0 or rows[r - 1][0] != g for r, (g, _) in enumerate(rows)])
    out: list[list[dict]] = [[] for _ in groups]
    for (g, _), st in zip(rows, stats):
        out[g].append(st)
    return out


def score_split(
    model,
    tokenizer,
    items: list[QAItem],
    *,
    batch_size: int = 64,
    max_new_tokens: int = 48,
    max_len: int = 512,
    samples: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> list[dict]:
    """Per-sample rows for one split (see the module docstring). Each item's answers are scored as continuations
    of one pass over its prompt (`_shared_prompt_stats`); on a guarded model (its prompt edits are per sequence)
    and for prompts truncated to `max_len`, as full sequences.

    `samples` N > 1, `temperature` or `top_p` sample the generated answers (`engine.sampling.sampling_for`),
    answer j with seed `seed + j`; with N > 1 a row's "generated" and "value_hit" are lists of N and its
    "rouge_l_recall" their mean (the teacher-forced figures do not depend on decoding)."""
    from dataclasses import replace

    from obliviate.engine.hooks import attached
    from obliviate.engine.sampling import sampling_for

    sampling = sampling_for(samples, temperature, top_p, seed)

    answers = [
        [("gt", it.answer)]
        + ([("para", it.paraphrased_answer)] if it.paraphrased_answer else [])
        + list(enumerate(it.perturbed_answer))
        for it in items
    ]  # (kind, text); kind = perturbed index
    stats: list[tuple[int, object, dict]] = []  # (item index, kind, stats)
    prompts = [prompt_ids(tokenizer, it.question) for it in items]  # the chat template, applied once per item
    guarded, full, shared = bool(attached(model)), [], []
    for i, p in enumerate(prompts):
        ans = [answer_ids(tokenizer, a) for _, a in answers[i]]
        if guarded or len(p) + max(map(len, ans)) > max_len:
            full.append(i)
        else:
            shared.append((i, p, ans))
    shared.sort(key=lambda x: len(x[1]))  # similar prompt lengths share a batch: less left padding
    per_batch = max(1, batch_size // max([len(a) for _, _, a in shared] or [1]))  # about batch_size answer rows
    for s in range(0, len(shared), per_batch):
        chunk = shared[s : s + per_batch]
        got = _shared_prompt_stats(model, [(p, ans) for _, p, ans in chunk], tokenizer.pad_token_id)
        stats += [(i, kind, st) for (i, _, _), group in zip(chunk, got) for (kind, _), st in zip(answers[i], group)]
    owner = [(i, kind, a) for i in full for kind, a in answers[i]]
    seqs = [encode_pair(tokenizer, items[i].question, a, max_len) for i, _, a in owner]
    stats += [
        (i, kind, st)
        for (i, kind, _), st in zip(
            owner,
            _forward_stats(
                model, seqs, tokenizer.pad_token_id, batch_size, texts=[items[i].question for i, _, _ in owner]
            ),
        )
    ]
    asked = [it.question for it in items]
    draws = [  # draws[j][i]: answer j to item i
        generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens,
            batch_size,
            texts=asked,
            sampling=replace(sampling, seed=sampling.seed + j) if sampling is not None else None,
        )
        for j in range(samples)
    ]
    rows = []
    for i, it in enumerate(items):
        got = [d[i] for d in draws]
        hits = [bool(it.value) and it.value.lower() in g.lower() for g in got]
        rouge = [rouge_l_recall(it.answer, g) for g in got]
        rows.append(
            {
                "id": it.id,
                "question": it.question,
                "answer": it.answer,
                "value": it.value,
                "generated": got[0] if samples == 1 else got,
                "rouge_l_recall": rouge[0] if samples == 1 else sum(rouge) / samples,
                "value_hit": hits[0] if samples == 1 else hits,
                "perturbed_loss": [],
            }
        )
    for i, kind, st in stats:
        if kind == "gt":
            rows[i].update(
                {"gt_loss": st["loss"], **{k: st[k] for k in ("token_logps", "token_z", "pred_ids", "target_ids")}}
            )
        elif kind == "para":
            rows[i]["paraphrased_loss"] = st["loss"]
        else:
            rows[i]["perturbed_loss"].append(st["loss"])
    return rows


def score_model(
    model, tokenizer, data: dict[str, list[QAItem]], *, grad_norm: bool = False, **kw
) -> dict[str, list[dict]]:
    """`score_split` rows of every split, scored as one union: the splits are small (a few dozen questions each),
    so one set of batches for all of them costs little more than one split's (see bench/real_scale.py eval).
    `grad_norm`: the forget and holdout rows also get `grad_norm` (`grad_norms`, for the GradNorm MIA)."""
    rows = score_split(model, tokenizer, [it for items in data.values() for it in items], **kw)
    out, start = {}, 0
    for split, items in data.items():
        out[split], start = rows[start : start + len(items)], start + len(items)
    for split in ("forget", "holdout") if grad_norm else ():
        norms = grad_norms(model, tokenizer, data.get(split) or [], kw.get("max_len", 512))
        for row, g in zip(out.get(split) or [], norms):
            row["grad_norm"] = g
    return out


def grad_norms(model, tokenizer, items: list[QAItem], max_len: int = 512) -> list[float]:
    """Per item: the mean over the model's floating-point parameter tensors of the 2-norm of the gradient of the
    item's mean answer NLL (the GradNorm MIA's statistic, `obliviate.metrics.mia`). One forward and one backward
    pass per item, in eval mode (no dropout), on the bare model (attached guards edit prompts, not weights);
    the parameters' requires_grad flags and the model's mode are restored afterwards."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.is_floating_point()]
    flags, training = [p.requires_grad for p in params], model.training
    model.eval()
    out = []
    try:
        for p in params:
            p.requires_grad_(True)
        for it in items:
            pair = encode_pair(tokenizer, it.question, it.answer, max_len)
            batch = {k: v.to(device) for k, v in collate([pair], tokenizer.pad_token_id).items()}
            with torch.enable_grad():  # a caller may evaluate under no_grad
                logp, n = sequence_logp(model, batch)
                grads = torch.autograd.grad(-(logp / n).sum(), params, allow_unused=True)
            out.append(float(torch.stack([g.float().norm() for g in grads if g is not None]).mean()))
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(training)
    return out


def metrics_from_rows(rows: dict[str, list[dict]], oracle_rows: dict[str, list[dict]] | None = None) -> dict:
    return compute_all({**rows, "oracle": oracle_rows})


def run_metrics(models: list[dict], oracle_rows: dict | None, oracles: list[dict], extra=None) -> dict:
    """One run's figures from the rows of its models (one per unlearning seed): the mean over its models of
    `metrics_from_rows` (and of `extra(rows)`, when given), with KLoM and pooled forget quality against the rows
    of `oracles` (`obliviate.metrics.klom`; none with fewer than 2). `eval`, the world demo and the leaderboard."""
    per_model = [metrics_from_rows(r, oracle_rows) | (extra(r) if extra else {}) for r in models]
    return mean_metrics(per_model) | distribution_metrics(models, oracles)


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
