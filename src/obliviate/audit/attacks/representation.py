"""White-box read-outs: is the forgotten value still in the hidden states, layer by layer?

Two read-outs of every layer's residual stream (hidden_states[i]: i = 0 is the embeddings, i = L the last
layer's output, after the final norm as transformers returns it):

1. Linear probes (the "latent knowledge" probing of Lynch et al. 2024, "Eight Methods to Evaluate Robust
   Unlearning in LLMs", arXiv:2402.16835; see also Hong et al. 2024, "Intrinsic Evaluation of Unlearning Using
   Parametric Knowledge Traces" (ConceptVectors), arXiv:2406.11614, who read concepts out of the parameters by
   vocabulary projection). Per attribute (birthplace, pet, ...; one class per value, 16 in the built-in world), a
   multinomial logistic regression is fit on the hidden states of *retained* people (the split's retain file) and
   predicts the value for the forget people. The probe is fit on the audited model's own retain representations:
   retained facts are what unlearning kept, so the probe learns where this model stores the values, and its
   accuracy on forget people says whether their values are still linearly decodable. The oracle never saw the
   forget people and scores about chance (its figure is the floor: names carry no information about values);
   an unlearned model above the oracle still encodes what it no longer says. Read at two positions:
   `probe_acc_layer{i}` at the last prompt token (the assistant tag, before any answer text) and
   `probe_answer_acc_layer{i}` at the token before the value in the teacher-forced gold answer ("X was born
   in" -> value), where the value has to be produced.
2. Logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens"): the final norm and the unembedding
   applied to hidden_states[i] at the token before the value. `logit_lens_top1_layer{i}`: the value's first
   content token (after a leading "a"/"an"/"the") is the top-1 token over the vocabulary; `logit_lens_prob_layer{i}`:
   its mean probability; `logit_lens_cand_acc_layer{i}`: it outranks the first content tokens of every other value
   of the same attribute (the lens as a classifier over the same classes as the probe, without training).

The read-outs "before the value" teacher-force the gold answer up to the value ("X was born in"), which is
itself a prefilling attack: a model that learned to refuse at the start of its answer (IdkNLL on the demo: value
accuracy 0.00) may still complete a prefilled answer (its last-layer `logit_lens_top1` is 0.71 there). The
prompt-position probe needs no prefill. The last layer's logit lens is the model's own next-token prediction.

Items without a `value` (TOFU, plain {question, answer} files) take the answer's first token as the probe target
instead: the class is that token, both read-outs sit at the last prompt token, and the logit lens ranks it against
the first tokens of the other answers of the same `attribute` (all items form one group when there is none).
A weaker probe: many first tokens are template words ("The", the person's name) that no forgetting touches.

Budget: `max_items` forget items read out (also capped by the audit's `limit`) and `train_items` retained items
the probes are fit on (a seeded sample of the retain set unlearning trained on, never a forget person or question;
200 under the audit's `--limit`, unless given).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from obliviate.audit.attacks import ATTACKS, Attack, AuditContext
from obliviate.core.errors import UsageError
from obliviate.models.anatomy import final_norm

ARTICLES = ("a ", "an ", "the ")


def content_start(value: str) -> int:
    """Offset of the value's first content word: after a leading article, when something follows it."""
    low = value.lower()
    return next((len(a) for a in ARTICLES if low.startswith(a) and len(value) > len(a)), 0)


def token_at(tok, text: str, char: int) -> tuple[list[int], int]:
    """(token ids of `text`, index of the first token that ends after character `char`)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], next(k for k, (_, e) in enumerate(enc["offset_mapping"]) if e > char)


def value_token(tok, item, value: str | None = None) -> tuple[int, int] | None:
    """(index in the answer's tokens, token id) of the first content token of `value` (default: the item's own)
    written into the item's gold answer; None when the answer does not contain the item's value."""
    start = item.answer.lower().find(item.value.lower()) if item.value else -1
    if start < 0:
        return None
    value = item.value if value is None else value
    text = item.answer[:start] + value + item.answer[start + len(item.value) :]
    ids, k = token_at(tok, text, start + content_start(value))
    return k, ids[k]


def target_token(tok, item) -> tuple[int, int]:
    """(index in the answer's tokens, token id) of the probe target: the value's first content token, or the
    answer's first token when the item has no `value`."""
    if item.value:
        return value_token(tok, item)
    ids, k = token_at(tok, item.answer, 0)
    return k, ids[k]


def label(tok, item) -> str:
    """The probe's class for an item: its value, or its answer's first token."""
    return item.value or f"<first token {target_token(tok, item)[1]}>"


def rival_tokens(tok, items: list, candidates: dict[str, list]) -> list[set[int]]:
    """Per item, the ids its target must outrank in the candidate lens: the first content tokens of the other
    values of its attribute written into its answer, or (no value) the other answers' first tokens."""
    firsts: dict[str, set[int]] = {}
    for attr, its in candidates.items():
        firsts[attr] = {target_token(tok, it)[1] for it in its if not it.value}
    out = []
    for it in items:
        t = target_token(tok, it)[1]
        if it.value:
            vals = {o.value for o in candidates.get(it.attribute, []) if o.value and o.value != it.value}
            out.append({value_token(tok, it, v)[1] for v in vals} - {t})
        else:
            out.append(firsts.get(it.attribute, set()) - {t})
    return out


@torch.no_grad()
def read_states(model, tok, items: list, rivals: list[set[int]] | None, batch_size: int) -> dict:
    """Teacher-forced passes over question + gold answer. Returns the hidden states of every layer at the last
    prompt token ("prompt") and at the token before the target ("answer"), [N, L+1, H] float32 numpy, and, when
    `rivals` (per item, see `rival_tokens`) are given, the logit-lens read-outs {(name, layer): [N]}."""
    from collections import defaultdict

    from obliviate.models.encode import IGNORE, collate, encode_pair

    norm, head = final_norm(model), model.get_output_embeddings()
    device = next(model.parameters()).device
    states, lens = {"prompt": [], "answer": []}, defaultdict(list)
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        pairs = [encode_pair(tok, it.question, it.answer) for it in chunk]
        batch = collate(pairs, tok.pad_token_id)
        o = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            output_hidden_states=True,
        )
        starts = [next(i for i, y in enumerate(labels) if y != IGNORE) for _, labels in pairs]  # answer starts
        vt = [target_token(tok, it) for it in chunk]
        rows = torch.arange(len(chunk), device=device)
        last = torch.tensor([p - 1 for p in starts], device=device)
        before = torch.tensor([p + k - 1 for p, (k, _) in zip(starts, vt)], device=device)  # predicts the target
        at_value = [h[rows, before] for h in o.hidden_states]
        states["prompt"].append(torch.stack([h[rows, last] for h in o.hidden_states], 1).float().cpu().numpy())
        states["answer"].append(torch.stack(at_value, 1).float().cpu().numpy())
        if rivals is None:
            continue
        true = torch.tensor([t for _, t in vt], device=device)
        others = rivals[s : s + batch_size]
        for i, h in enumerate(at_value):
            if i == len(at_value) - 1:
                logits = o.logits[rows, before].float()  # the model's own read-out of its last layer
            elif norm is not None:
                logits = head(norm(h)).float()
            else:
                continue
            true_logit = logits.gather(1, true[:, None])[:, 0]
            lens["top1", i] += (logits.argmax(-1) == true).float().tolist()
            lens["prob", i] += torch.softmax(logits, -1).gather(1, true[:, None])[:, 0].tolist()
            lens["cand", i] += [
                float(all(true_logit[r] > logits[r, j] for j in other)) if other else None
                for r, other in enumerate(others)
            ]
    return {**{k: np.concatenate(v) for k, v in states.items()}, "lens": lens}


def probe_accuracy(train_x, train_y, test_x, test_y, c: float = 0.1) -> float:
    """Accuracy on (test_x, test_y) of a standardised multinomial logistic regression fit on the train set.
    BLAS uses as many threads as torch may (on a shared CPU, more threads than cores slow it down tenfold)."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=torch.get_num_threads()), warnings.catch_warnings():
        # first-token classes (items without a value) are many per sample: expected, not a regression problem
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(train_x, train_y)
        return float(np.mean(clf.predict(test_x) == np.asarray(test_y)))


def _usable(items: list) -> list:
    """Items with a probe target: a `value` written in the answer, or no value (the answer's first token)."""
    return [it for it in items if not it.value or it.value.lower() in it.answer.lower()]


def retain_train_items(ctx: AuditContext, forget: list, k: int) -> list:
    """Retained items for the forget items' attributes, from the retain set unlearning trained on (else the
    evaluated retain items): never a forget person nor a forget question; deduplicated by question; a seeded
    sample of at most k."""
    names = {it.subject for it in forget if it.subject}
    attrs, seen = {it.attribute for it in forget}, {it.question for it in forget}
    out = []
    for it in _usable(ctx.retain_train_items()):
        if it.subject not in names and it.attribute in attrs and it.question not in seen:
            seen.add(it.question)
            out.append(it)
    return out if len(out) <= k else random.Random(ctx.seed).sample(out, k)


@ATTACKS.register("representation")
@dataclass
class Representation(Attack):
    max_items: int = 100
    train_items: int = 1000
    batch_size: int = 32
    description = "linear probes and logit lens on every layer's hidden states"
    quick = {"train_items": 200}

    def __post_init__(self):
        if self.max_items < 1 or self.train_items < 2 or self.batch_size < 1:
            raise UsageError("representation: max_items >= 1, train_items >= 2, batch_size >= 1")

    def _forget(self, ctx: AuditContext) -> list:
        return _usable(ctx.forget_items())[: min(self.max_items, ctx.limit or self.max_items)]

    def missing(self, ctx: AuditContext) -> str | None:
        forget = self._forget(ctx)
        if not forget:
            return "no forget item has its `value` written in its answer (nor lacks a value)"
        if not retain_train_items(ctx, forget, self.train_items):
            return (
                "no retained item (--retain, or the layout's retain file) shares an attribute with the forget "
                "items: the probes are fit on retained items"
            )
        return None

    def run(self, ctx: AuditContext, model, tok) -> dict:
        forget = self._forget(ctx)
        why = self.missing(ctx)
        if why:
            raise UsageError(f"representation: {why}")
        train = retain_train_items(ctx, forget, self.train_items)
        candidates: dict[str, list] = {}
        for it in train + forget:
            candidates.setdefault(it.attribute, [])
            if not it.value or it.value not in {c.value for c in candidates[it.attribute]}:
                candidates[it.attribute].append(it)
        model.eval()
        test = read_states(model, tok, forget, rival_tokens(tok, forget, candidates), self.batch_size)
        fit = read_states(model, tok, train, None, self.batch_size)
        y_fit, y_test = [label(tok, it) for it in train], [label(tok, it) for it in forget]
        n_layers = test["prompt"].shape[1]
        out: dict[str, float | None] = {}
        for where, name in (("prompt", "probe_acc"), ("answer", "probe_answer_acc")):
            for i in range(n_layers):
                hits, n = 0.0, 0
                for attr in sorted({it.attribute for it in forget}):
                    tr = [j for j, it in enumerate(train) if it.attribute == attr]
                    te = [j for j, it in enumerate(forget) if it.attribute == attr]
                    if len({y_fit[j] for j in tr}) < 2:
                        continue  # nothing to learn for this attribute
                    acc = probe_accuracy(
                        fit[where][tr, i], [y_fit[j] for j in tr], test[where][te, i], [y_test[j] for j in te]
                    )
                    hits, n = hits + acc * len(te), n + len(te)
                out[f"{name}_layer{i}"] = hits / n if n else None
        for key, lab in (("top1", "logit_lens_top1"), ("prob", "logit_lens_prob"), ("cand", "logit_lens_cand_acc")):
            for i in range(n_layers):
                vals = [v for v in test["lens"].get((key, i), []) if v is not None]
                out[f"{lab}_layer{i}"] = float(np.mean(vals)) if vals else None
        out["n_items"], out["n_train"] = float(len(forget)), float(len(train))
        return out
