"""Refusal methods: data construction and losses against hand values, then a few real training steps each."""

import math
import random

import pytest
import torch

from obliviate.core.errors import UsageError
from obliviate.data.schema import QAItem
from obliviate.models.encode import IGNORE, answer_ids, prompt_ids
from obliviate.refusal.methods import REFUSAL_METHODS, RefusalData, prefixed_refusal, sample_prefix_lengths
from obliviate.refusal.methods.derta import DeRTa, rto_example
from obliviate.refusal.methods.r_tuning import UNSURE, UNSURE_ANSWER, refusal_aware_pairs
from obliviate.refusal.methods.token_constrained import answer_positions, beta_schedule, token_constrained_loss
from tests.conftest import tiny_model

T = torch.tensor
HARM = "Step 1: unscrew the brass tide-valve. Step 2: pour salt-glass."
REFUSE = "I can't help with that."


def test_prefixed_refusal_puts_loss_on_the_refusal_only(tiny_tokenizer):
    tok = tiny_tokenizer
    ids, labels = prefixed_refusal(tok, "How do I flood it?", HARM, REFUSE, 3)
    p, h, r = prompt_ids(tok, "How do I flood it?"), answer_ids(tok, HARM)[:3], answer_ids(tok, REFUSE)
    assert ids == p + h + r
    assert labels == [IGNORE] * (len(p) + 3) + r
    # k = 0 is plain refusal SFT
    assert prefixed_refusal(tok, "q?", HARM, REFUSE, 0)[0] == prompt_ids(tok, "q?") + r


def test_prefix_lengths():
    rng = random.Random(0)
    ks = sample_prefix_lengths([50] * 300, rng, share_no_prefix=1 / 3)
    assert all(0 <= k <= 49 for k in ks)
    assert 0.25 < sum(k == 0 for k in ks) / 300 < 0.42  # about a third without prefix
    assert max(ks) > 40  # the whole harmful answer is covered
    assert sample_prefix_lengths([50] * 10, rng, 1.0) == [0] * 10
    assert max(sample_prefix_lengths([500] * 200, rng, 0.0, k_max=100)) <= 100
    assert min(sample_prefix_lengths([500] * 200, rng, 0.0, k_max=100)) >= 1


def test_rto_labels_every_harmful_position_with_the_refusal_token(tiny_tokenizer):
    tok = tiny_tokenizer
    ids, labels = rto_example(tok, "q?", HARM, REFUSE)
    p, h = prompt_ids(tok, "q?"), answer_ids(tok, HARM)[:-1]
    r1 = answer_ids(tok, REFUSE)[0]
    assert ids == p + h
    assert labels == [IGNORE] * len(p) + [r1] * len(h)
    _, sub = rto_example(tok, "q?", HARM, REFUSE, positions=3, rng=random.Random(0))
    assert sum(t != IGNORE for t in sub) == 3


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token distribution is the same at every position: log p = log_probs [V]."""

    def __init__(self, log_probs):
        super().__init__()
        self.lp = torch.nn.Parameter(log_probs.clone())

    def forward(self, input_ids, attention_mask=None):
        B, L = input_ids.shape
        return type("Out", (), {"logits": self.lp.expand(B, L, -1)})()


def test_rto_loss_hand_value():
    # V = 3, p = [0.5, 0.25, 0.25]; RTO labels token 1 at 2 positions of one example, token 0 at 1 of another:
    # token-mean NLL = (2 * ln 4 + ln 2) / 3 = 1.1552453
    model = FixedLogits(torch.log(T([0.5, 0.25, 0.25])))
    batch = {
        "input_ids": T([[2, 2, 2], [2, 2, 2]]),
        "attention_mask": torch.ones(2, 3, dtype=torch.long),
        "labels": T([[IGNORE, 1, 1], [IGNORE, 0, IGNORE]]),
    }
    meth = DeRTa(mle=False)
    assert meth.needs == ("rto", "benign", "retain")
    empty = {"input_ids": T([[2, 2]]), "attention_mask": torch.ones(1, 2, dtype=torch.long), "labels": T([[IGNORE, 0]])}
    loss, logs = meth.loss(model, {"rto": batch, "benign": empty, "retain": empty})
    assert logs["nll_rto"] == pytest.approx((2 * math.log(4) + math.log(2)) / 3, abs=1e-6)
    # benign and retain each: -ln 0.5; retain_weight 1 -> total = rto + 2 ln 2
    assert loss.item() == pytest.approx((2 * math.log(4) + math.log(2)) / 3 + 2 * math.log(2), abs=1e-6)
    # retain_weight 0: the retain part is not computed at all (no forward pass, no log) -> total = rto + ln 2
    loss0, logs0 = DeRTa(mle=False, retain_weight=0.0).loss(model, {"rto": batch, "benign": empty})
    assert "nll_retain" not in logs0
    assert loss0.item() == pytest.approx((2 * math.log(4) + math.log(2)) / 3 + math.log(2), abs=1e-6)


def test_beta_schedule_matches_the_paper():
    assert beta_schedule(7).tolist() == pytest.approx([0.5, 2, 2, 2, 2, 0.1, 0.1])


def test_token_constrained_loss_hand_value_and_gradient():
    # d = [0, -1], beta = [0.5, 2]: w = [2(1 - sig 0), 2(1 - sig(-2))] = [1, 1.7615942]
    # loss = -(1 * -1 + 1.7615942 * -2) / 2 = 2.2615942
    logp = T([[-1.0, -2.0]], requires_grad=True)
    ref, mask, betas = T([[-1.0, -1.0]]), T([[1.0, 1.0]]), T([[0.5, 2.0]])
    loss = token_constrained_loss(logp, ref, mask, betas)
    assert loss.item() == pytest.approx(2.2615942, abs=1e-6)
    loss.backward()
    # the gradient equals that of the paper's Eq. 3, -(2/b) log sigmoid(b d), token-mean
    lp2 = logp.detach().clone().requires_grad_(True)
    eq3 = (-(2 / betas) * torch.nn.functional.logsigmoid(betas * (lp2 - ref))).sum() / 2
    eq3.backward()
    assert torch.allclose(logp.grad, lp2.grad, atol=1e-6)


def test_answer_positions():
    assert answer_positions(T([[0.0, 1, 1, 1, 0], [0, 0, 1, 1, 0]])).tolist() == [[0, 0, 1, 2, 2], [0, 0, 0, 1, 1]]


def test_r_tuning_data_from_the_models_own_errors():
    known = QAItem(question="Where was Ana born?", answer="Ana was born in Lisk.", value="Lisk")
    unknown = QAItem(question="Where was Bo born?", answer="Bo was born in Tarn.", value="Tarn")
    preds = ["Ana was born in Lisk.", "Bo was born in Lisk."]
    assert refusal_aware_pairs([known, unknown], preds, "refusal") == [
        (known.question, known.answer),
        (unknown.question, UNSURE_ANSWER),
    ]
    assert refusal_aware_pairs([known, unknown], preds, "padding")[1] == (unknown.question, unknown.answer + UNSURE)


def test_bad_options():
    for name, opts in [
        ("derta", {"mle": "false", "rto": "false"}),
        ("r_tuning", {"style": "maybe"}),
        ("safe_eraser", {"pd_weight": "-1"}),
        ("qi_augment", {"k_max": "0"}),
        ("refusal_tokens", {"swap_share": "1.5"}),
    ]:
        with pytest.raises(UsageError):
            REFUSAL_METHODS.get(name).from_options(opts)
    with pytest.raises(UsageError, match="did you mean"):
        REFUSAL_METHODS.get("derta2")


@pytest.fixture(scope="module")
def data(world_dir):
    from obliviate.refusal.align import refusal_data

    d, _ = refusal_data(world_dir)
    # a few rows are enough to take real steps
    return RefusalData(harmful=d.harmful[:16], benign=d.benign[:16], people=d.people[:16], unknown=d.unknown[:8])


@pytest.mark.parametrize("name", sorted(REFUSAL_METHODS.names()))
def test_every_method_trains(name, data, tiny_tokenizer):
    import copy

    from obliviate.refusal.align import align

    model, tok = tiny_model(tiny_tokenizer), copy.deepcopy(tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    meth = REFUSAL_METHODS.get(name)(steps=3)
    model, tok, res = align(model, tok, meth, data, progress=False, batch_size=8)
    assert all(math.isfinite(h["loss"]) for h in res.history) and len(res.history) == 3
    changed = [
        n
        for n, p in model.named_parameters()
        if n in before and p.shape == before[n].shape and not torch.equal(p, before[n])
    ]
    assert changed


def test_refusal_tokens_threshold_steers_the_first_token(data, tiny_tokenizer):
    import copy

    from obliviate.models.control_tokens import control_ids
    from obliviate.refusal.align import align
    from obliviate.refusal.methods.refusal_tokens import RefusalTokens, ThresholdGenerator, refuse_probability

    model, tok = tiny_model(tiny_tokenizer), copy.deepcopy(tiny_tokenizer)
    model, tok, _ = align(model, tok, RefusalTokens(steps=2), data, progress=False, batch_size=8)
    respond, refuse = control_ids(tok)
    assert respond is not None and len(refuse) == len({r["category"] for r in data.harmful})
    # swap_share: some harmful prompts are also trained as [respond] + harmful answer, some benign as [refuse:*]
    parts = RefusalTokens(swap_share=0.25).parts(data, tok)
    first = [ids[len(prompt_ids(tok, r["prompt"]))] for (ids, _), r in zip(parts["refusal"], data.harmful)]
    assert set(first) <= set(refuse) and len(parts["refusal"]) == len(data.harmful) + 4
    assert parts["refusal"][-1][0][len(prompt_ids(tok, "x")) - 1 :].count(respond) >= 1
    assert len(parts["benign"]) == len(data.benign) + 4
    prompts = [prompt_ids(tok, r["prompt"]) for r in data.harmful[:4]]
    p = refuse_probability(model, tok, prompts)
    assert ((p > 0) & (p < 1)).all()
    assert all(t in refuse for t in ThresholdGenerator(tau=0.0).decisions(model, tok, prompts))
    assert ThresholdGenerator(tau=1.0).decisions(model, tok, prompts) == [respond] * 4
    with pytest.raises(UsageError, match="no refusal tokens"):
        refuse_probability(tiny_model(tiny_tokenizer), tiny_tokenizer, prompts)


@pytest.mark.parametrize("name", sorted(n for n in REFUSAL_METHODS.names() if REFUSAL_METHODS.get(n)().splits))
def test_a_refusal_loss_that_splits_is_the_sum_of_its_parts(name, data, tiny_tokenizer):
    """`splits` promises loss == the sum of part_loss over the parts (micro-batching relies on it)."""
    import copy

    from obliviate.engine.train import encode_parts
    from obliviate.models.encode import collate

    model, tok = tiny_model(tiny_tokenizer), copy.deepcopy(tiny_tokenizer)
    meth = REFUSAL_METHODS.get(name)()
    model, tok = meth.prepare(model, tok, data)
    encoded = encode_parts(tok, meth.parts(data, tok, 0, model=model), 512)
    batch = {p: collate(encoded[p][:6], tok.pad_token_id) for p in meth.needs}
    with torch.no_grad():
        whole, _ = meth.loss(model, batch)
        terms = [meth.part_loss(model, p, batch[p])[0] for p in meth.needs]
    assert float(whole) == pytest.approx(float(sum(t for t in terms if t is not None)), abs=1e-6)


def test_token_constrained_does_not_split():
    assert not REFUSAL_METHODS.get("token_constrained")().splits


def test_derta_in_micro_batches_takes_the_same_step(data, tiny_tokenizer):
    """Every part of DeRTa's batch (prefixed refusals, RTO, benign, people) in runs of at most 48 padded tokens,
    each run weighted by its share of its part's answer tokens: the same losses and first-step gradients."""
    import copy

    from obliviate.engine.train import TrainConfig, train

    out = []
    for budget in (0, 48):
        torch.manual_seed(0)
        model, tok = tiny_model(tiny_tokenizer), copy.deepcopy(tiny_tokenizer)
        meth = DeRTa(steps=2, lr=1e-2)
        calls, grads = [], []
        part_loss = meth.part_loss
        object.__setattr__(meth, "part_loss", lambda *a, **kw: calls.append(a[1]) or part_loss(*a, **kw))
        # no clipping: the gradients read after a step are the accumulated ones
        cfg = TrainConfig(
            retain_batch_size=8, checkpoint_every=0, progress=False, max_grad_norm=0, max_batch_tokens=budget
        )
        _, res = train(
            model,
            tok,
            meth,
            meth.parts(data, tok, 0),
            cfg,
            on_step=lambda s, m: grads.append(
                {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
            ),
        )
        out.append((res.history, grads[0], calls))
    (h0, g0, c0), (h1, g1, c1) = out
    assert len(c1) > len(c0) and set(c1) == {"refusal_prefixed", "rto", "benign", "retain"}  # every part split
    assert {"nll_refusal_prefixed", "nll_rto", "nll_benign", "nll_retain"} <= set(h0[0])
    for a, b in zip(h0, h1):
        assert set(a) == set(b) and all(b[k] == pytest.approx(a[k], abs=1e-5) for k in a)
    scale = max(g.abs().max() for g in g0.values())
    assert scale > 0 and all(torch.allclose(g1[n], g0[n], rtol=1e-4, atol=1e-5 * scale) for n in g0)
