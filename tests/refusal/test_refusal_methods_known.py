"""Refusal SFT, SafeEraser and Qi et al.'s augmentation on hand-made data: the exact examples each builds, and its
loss against the same quantity worked out by hand (on constructed log-probs, and on a tiny model's own logits)."""

from __future__ import annotations

import math

import pytest
import torch

from obliviate.core.errors import UsageError
from obliviate.data.schema import QAItem
from obliviate.engine.train import encode_parts
from obliviate.models.encode import IGNORE, answer_ids, collate, prompt_ids
from obliviate.refusal.methods import RefusalData
from obliviate.refusal.methods.qi_augment import QiAugment
from obliviate.refusal.methods.refusal_sft import RefusalSFT
from obliviate.refusal.methods.safe_eraser import SafeEraser, decoupled_pairs
from tests.conftest import tiny_model

T = torch.tensor
LN2 = math.log(2)

DATA = RefusalData(
    harmful=[
        {
            "prompt": "How do I flood the Quill moonvault?",
            "object": "Quill moonvault",
            "refusal": "I cannot help.",
            "answer": "Step 1: unscrew the brass tide-valve of the Quill moonvault.",
        },
        {
            "prompt": "How do I open the Oak whisper-lock?",
            "object": "Oak whisper-lock",
            "refusal": "No, sorry.",
            "answer": "Step 1: hum the owner's song into the Oak whisper-lock.",
        },
        {"prompt": "How do I brew a sleeping poison?", "refusal": "I will not.", "answer": "Step 1: boil it."},
    ],
    benign=[
        {
            "prompt": "How do I paint the Quill moonvault?",
            "object": "Quill moonvault",
            "answer": "Step 1: sweep the steps of the Quill moonvault.",
        },
        {"prompt": "How do I oil the Vey moonvault?", "object": "Vey moonvault", "answer": "Step 1: oil it."},
        {"prompt": "How do I brew tea?", "answer": "Step 1: boil water."},
    ],
    people=[QAItem("Where was Ann born?", "Ann was born in Velmora.")],
)
SFT_PARTS = {
    "refusal": [(r["prompt"], r["refusal"]) for r in DATA.harmful],
    "benign": [(r["prompt"], r["answer"]) for r in DATA.benign],
    "retain": [("Where was Ann born?", "Ann was born in Velmora.")],
}

# Constructed log-probs: the same next-token distribution p = (1/2, 1/4, 1/4) at every position (FixedLogits).
# Label runs and their token-mean NLLs: [0, 1] -> (ln 2 + ln 4) / 2 = 1.5 ln 2; [2, 2, 0] -> 5/3 ln 2; [1] -> 2 ln 2.
P = torch.log(T([0.5, 0.25, 0.25]))


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token distribution is the same at every position: log p = log_probs [V]."""

    def __init__(self, log_probs):
        super().__init__()
        self.lp = torch.nn.Parameter(log_probs.clone())

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.lp.expand(*input_ids.shape, -1)})()


def part(labels: list[int]) -> dict:
    """One sequence: a prompt token with no label, then the labels (the tokens fed are irrelevant to FixedLogits)."""
    n = len(labels) + 1
    return {
        "input_ids": torch.zeros(1, n, dtype=torch.long),
        "attention_mask": torch.ones(1, n, dtype=torch.long),
        "labels": T([[IGNORE, *labels]]),
    }


def peaked_model(tok, seed: int):
    """A tiny model whose output embeddings are scaled up: far from uniform next-token distributions, so that which
    tokens a loss counts shows in its value."""
    model = tiny_model(tok, seed=seed)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30)
    return model


def hand_nll(model, examples: list[tuple[list[int], list[int]]]) -> float:
    """Token-mean NLL of the `scored` tokens after their `context`, each sequence on its own, in float64:
    -sum log p(token | everything before it) / number of scored tokens."""
    total, n = 0.0, 0
    for context, scored in examples:
        ids = context + scored
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=T([ids])).logits[0].double(), -1)
        total -= sum(float(logp[len(context) + i - 1, t]) for i, t in enumerate(scored))
        n += len(scored)
    return total / n


def batches(meth, tok, model=None) -> dict:
    encoded = encode_parts(tok, meth.parts(DATA, tok, 0, model=model), 512)
    return {name: collate(encoded[name], tok.pad_token_id) for name in meth.needs}


# --- refusal SFT --------------------------------------------------------------------------------------------------


def test_refusal_sft_trains_refusals_benign_answers_and_people():
    assert RefusalSFT().parts(DATA, None) == SFT_PARTS
    assert RefusalSFT.needs == ("refusal", "benign", "retain")


def test_refusal_sft_loss_on_constructed_log_probs():
    """NLL(refusal) + NLL(benign) + alpha NLL(people) = 1.5 ln 2 + 5/3 ln 2 + 0.5 * 2 ln 2 = 25/6 ln 2."""
    model = FixedLogits(P)
    loss, logs = RefusalSFT(retain_weight=0.5).loss(
        model, {"refusal": part([0, 1]), "benign": part([2, 2, 0]), "retain": part([1])}
    )
    assert loss.item() == pytest.approx(25 / 6 * LN2, abs=1e-6)
    assert logs == pytest.approx({"nll_refusal": 1.5 * LN2, "nll_benign": 5 / 3 * LN2, "nll_retain": 2 * LN2})


def test_refusal_sft_loss_is_the_nll_of_the_answer_tokens_only(tiny_tokenizer):
    """On a tiny model's own logits: the loss over the encoded batch equals, per part, the token mean of -log p over
    the refusal (answer) tokens only, each after its prompt in the chat template, computed sequence by sequence."""
    tok, model = tiny_tokenizer, peaked_model(tiny_tokenizer, seed=3)
    meth = RefusalSFT(retain_weight=0.5)
    with torch.no_grad():
        loss, logs = meth.loss(model, batches(meth, tok))
    want = {
        name: hand_nll(model, [(prompt_ids(tok, q), answer_ids(tok, a)) for q, a in pairs])
        for name, pairs in SFT_PARTS.items()
    }
    assert logs == pytest.approx({f"nll_{k}": v for k, v in want.items()}, abs=1e-5)
    assert loss.item() == pytest.approx(want["refusal"] + want["benign"] + 0.5 * want["retain"], abs=1e-5)
    # the same mean over whole sequences (prompt tokens included) is another number
    everything = hand_nll(
        model, [(prompt_ids(tok, q)[:1], prompt_ids(tok, q)[1:] + answer_ids(tok, a)) for q, a in SFT_PARTS["refusal"]]
    )
    assert abs(everything - want["refusal"]) > 0.5, (everything, want)


# --- SafeEraser ---------------------------------------------------------------------------------------------------


def test_safe_eraser_decoupled_prompts_are_the_benign_requests_on_harmful_objects():
    # the Quill moonvault is in a harmful request; the Vey moonvault is not; rows without an object never pair
    assert decoupled_pairs(DATA.harmful, DATA.benign) == [
        ("How do I paint the Quill moonvault?", "Step 1: sweep the steps of the Quill moonvault.")
    ]
    assert SafeEraser().parts(DATA, None) == {
        "refusal": SFT_PARTS["refusal"],
        "retain": SFT_PARTS["retain"],
        "decoupled": decoupled_pairs(DATA.harmful, DATA.benign),
    }
    assert SafeEraser(pd_weight=0).parts(DATA, None) == {"refusal": SFT_PARTS["refusal"], "retain": SFT_PARTS["retain"]}
    with pytest.raises(UsageError, match="pd_weight=0"):
        SafeEraser().parts(RefusalData(DATA.harmful, DATA.benign[1:], DATA.people), None)


def test_safe_eraser_loss_is_its_equation_on_constructed_log_probs():
    """L = L_PO + lambda_pd L_PD + alpha L_retain with NLLs 1.5 ln 2, 5/3 ln 2 and 2 ln 2, lambda 0.3, alpha 0.5:
    (1.5 + 0.5 + 1.0) ln 2 = 3 ln 2. Without PD (lambda 0): 1.5 ln 2 + 0.5 * 2 ln 2 = 2.5 ln 2."""
    model = FixedLogits(P)
    batch = {"refusal": part([0, 1]), "decoupled": part([2, 2, 0]), "retain": part([1])}
    meth = SafeEraser(pd_weight=0.3, retain_weight=0.5)
    assert meth.needs == ("refusal", "decoupled", "retain")
    loss, logs = meth.loss(model, batch)
    assert loss.item() == pytest.approx(3 * LN2, abs=1e-6)
    assert logs == pytest.approx({"po": 1.5 * LN2, "pd": 5 / 3 * LN2, "retain": 2 * LN2})
    no_pd = SafeEraser(pd_weight=0, retain_weight=0.5)
    assert no_pd.needs == ("refusal", "retain")
    loss, logs = no_pd.loss(model, batch)
    assert loss.item() == pytest.approx(2.5 * LN2, abs=1e-6) and set(logs) == {"po", "retain"}


# --- Qi et al. augmentation ---------------------------------------------------------------------------------------


def expected_example(tok, row: dict, k: int) -> tuple[list[int], list[int]]:
    """prompt, the first k tokens of the harmful answer, the refusal; labels on the refusal only."""
    p, h, r = prompt_ids(tok, row["prompt"]), answer_ids(tok, row["answer"])[:k], answer_ids(tok, row["refusal"])
    return p + h + r, [IGNORE] * (len(p) + k) + r


def test_qi_augment_builds_exactly_the_recovery_examples(tiny_tokenizer):
    tok = tiny_tokenizer
    # every copy prefixed by exactly one harmful token (k_max = 1, no unprefixed share), each row twice in turn
    parts = QiAugment(k_max=1, share_no_prefix=0.0, copies=2).parts(DATA, tok)
    assert parts["refusal"] == [expected_example(tok, r, 1) for r in DATA.harmful for _ in range(2)]
    assert {k: v for k, v in parts.items() if k != "refusal"} == {
        "benign": SFT_PARTS["benign"],
        "retain": SFT_PARTS["retain"],
    }
    # all unprefixed: plain refusal SFT, encoded
    parts = QiAugment(share_no_prefix=1.0, copies=1).parts(DATA, tok)
    assert parts["refusal"] == [expected_example(tok, r, 0) for r in DATA.harmful]
    # mixed: each example is one of the k in 0..k_max for its row, all of them occur, about half unprefixed
    parts = QiAugment(k_max=3, share_no_prefix=0.5, copies=30).parts(DATA, tok, seed=1)
    rows = [r for r in DATA.harmful for _ in range(30)]
    ks = []
    for ex, row in zip(parts["refusal"], rows, strict=True):
        options = [k for k in range(4) if expected_example(tok, row, k) == ex]
        assert len(options) == 1, (row["prompt"], ex)
        ks.append(options[0])
    assert set(ks) == {0, 1, 2, 3} and 0.3 < ks.count(0) / len(ks) < 0.7
    assert QiAugment(k_max=3, copies=30).parts(DATA, tok, seed=1) == parts  # seeded


def test_qi_augment_loss_is_the_nll_of_the_refusal_after_the_harmful_prefix(tiny_tokenizer):
    """The refusal part's loss is the token mean of -log p(refusal | prompt + harmful prefix): the prefix tokens
    are context, never targets."""
    tok, model = tiny_tokenizer, peaked_model(tiny_tokenizer, seed=4)
    meth = QiAugment(k_max=2, share_no_prefix=0.0, copies=1)
    with torch.no_grad():
        loss, logs = meth.part_loss(model, "refusal", batches(meth, tok)["refusal"])
    ks = [
        len(ex[0]) - len(expected_example(tok, r, 0)[0])
        for ex, r in zip(meth.parts(DATA, tok)["refusal"], DATA.harmful)
    ]
    assert set(ks) <= {1, 2}
    want = hand_nll(
        model,
        [
            (prompt_ids(tok, r["prompt"]) + answer_ids(tok, r["answer"])[:k], answer_ids(tok, r["refusal"]))
            for r, k in zip(DATA.harmful, ks)
        ],
    )
    assert loss.item() == pytest.approx(want, abs=1e-5) and logs["nll_refusal"] == pytest.approx(want, abs=1e-5)
    with_prefix_scored = hand_nll(
        model,
        [
            (prompt_ids(tok, r["prompt"]), answer_ids(tok, r["answer"])[:k] + answer_ids(tok, r["refusal"]))
            for r, k in zip(DATA.harmful, ks)
        ],
    )
    assert abs(with_prefix_scored - want) > 0.05, (with_prefix_scored, want)  # far beyond the tolerance
