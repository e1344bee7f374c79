"""The unlearning attacks of `obliviate audit` (in_context, probes, representation, quantize, mia): their pure
parts, their options, and a run of each on the tiny trained model of conftest.py."""

from __future__ import annotations

import math

import pytest
import torch

from obliviate.audit.attacks import ATTACKS, AuditContext
from obliviate.audit.attacks.in_context import context_prompts
from obliviate.audit.attacks.probes import CATEGORIES, TEMPLATES, probe_prompt
from obliviate.audit.attacks.quantize import fake_quantize, parse_bits, quantize_linears, restore
from obliviate.audit.attacks.representation import content_start, final_norm, probe_accuracy, value_token
from obliviate.core.errors import UsageError
from obliviate.data.schema import QAItem, load_qa


@pytest.fixture(scope="module", autouse=True)
def one_thread(target_dir):
    """Tiny models run faster on one thread, and much faster than two when the CPU is shared. The session's
    target is trained first, with the session's setting, so that other modules see the same model."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def forget(world_dir):
    return load_qa(world_dir / "forget10.jsonl")


# --- quantize -------------------------------------------------------------------------------------------------


def test_fake_quantize_error_bounds_and_grid():
    w = torch.tensor([[0.5, -0.25, 0.1, -1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, -2.0, 0.3]])
    for bits in (8, 4, 3):
        q = fake_quantize(w, bits)
        qmax = 2 ** (bits - 1) - 1
        step = w.abs().amax(1, keepdim=True) / qmax  # per output row
        assert torch.all((w - q).abs() <= step / 2 + 1e-7)
        assert torch.equal(q[1], w[1])  # an all-zero row stays zero (no division by zero)
        assert torch.allclose(q.abs().amax(1), w.abs().amax(1))  # the row maximum is on the grid
        levels = (q[2] / step[2]).round()
        assert torch.allclose(q[2], levels * step[2]) and levels.abs().max() <= qmax
    assert (w - fake_quantize(w, 8)).abs().max() < (w - fake_quantize(w, 4)).abs().max()
    # 2 bits, symmetric: the levels are -1, 0, 1 times the row maximum
    assert torch.equal(fake_quantize(torch.tensor([[1.0, -0.6, 0.4, 0.0]]), 2), torch.tensor([[1.0, -1.0, 0.0, 0.0]]))


def test_quantize_linears_restores_exactly(tiny_tokenizer):
    from tests.conftest import tiny_model

    model = tiny_model(tiny_tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    saved = quantize_linears(model, 4)
    assert saved and any(not torch.equal(model.state_dict()[n], before[n]) for n in saved)
    restore(model, saved)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_fake_quantize_fused_experts_by_hand():
    """[E=1, in=2, out=2] read along axis 1 (gpt-oss's down_proj layout): one scale per output column. 2 bits:
    qmax 1, column scales 1.0 and 0.5; round(w / s) clamped to [-1, 1]."""
    w = torch.tensor([[[1.0, 0.2], [-0.4, -0.5]]])
    assert torch.allclose(fake_quantize(w, 2, in_axis=1), torch.tensor([[[1.0, 0.0], [0.0, -0.5]]]))
    # read along axis 2 instead (Mixtral's [E, out, in]): one scale per row, 1.0 and 0.5
    assert torch.allclose(fake_quantize(w, 2, in_axis=2), torch.tensor([[[1.0, 0.0], [-0.5, -0.5]]]))


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_quantize_reaches_fused_experts(family):
    """A MoE's fused expert tensors are quantised too, per expert and output channel, and restored exactly."""
    from obliviate.models.anatomy import fused_expert_input_axes
    from tests.models.test_anatomy import _model

    model = _model(family)
    axes = {
        name.split(".layers.0.")[-1]: axis for name, _, axis in fused_expert_input_axes(model) if ".layers.0." in name
    }
    # the down projection reads along its expert-width axis, gate_up along the residual width
    want = {
        "mixtral": {"mlp.experts.down_proj": 2, "mlp.experts.gate_up_proj": 2},
        "gpt_oss": {"mlp.experts.down_proj": 1, "mlp.experts.gate_up_proj": 1},
    }[family]
    assert axes == want
    before = {k: v.clone() for k, v in model.state_dict().items()}
    saved = quantize_linears(model, 4)
    fused = [n for n in saved if ".experts." in n]
    assert len(fused) == 2 * 3 and all(not torch.equal(model.state_dict()[n], before[n]) for n in fused)
    restore(model, saved)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_parse_bits():
    assert parse_bits("8,4") == parse_bits([8, 4]) == parse_bits("[8, 4]") == (8, 4)
    assert ATTACKS.get("quantize").from_options({"bits": "4"}).bits == "4"
    for bad in ("", "1", "32", "x"):
        with pytest.raises(UsageError):
            parse_bits(bad)


# --- prompts ----------------------------------------------------------------------------------------------------


def test_probe_prompts_name_the_person_never_the_value(forget):
    assert {it.attribute for it in forget} <= set(TEMPLATES)
    for it in forget:
        prompts = [probe_prompt(it, c) for c in CATEGORIES]
        assert len(set(prompts)) == 3 and it.question not in prompts
        for p in prompts:
            assert it.subject in p and it.value.lower() not in p.lower()
    odd = QAItem(
        question="What is the motto of Zed?",
        answer="Zed's motto is 'onward'.",
        subject="Zed",
        attribute="motto",
        value="onward",
    )
    assert all(odd.question in probe_prompt(odd, c) for c in CATEGORIES)


def test_in_context_prompts_never_contain_the_asked_value(forget):
    for k in (1, 2, 4):
        asked, same, other = context_prompts(forget, k, seed=0)
        assert len(asked) == len(forget)
        for it, s, o in zip(asked, same, other):
            assert s.endswith(it.question) and o.endswith(it.question)
            assert it.value.lower() not in s.lower() and it.value.lower() not in o.lower()
            own = [
                o
                for o in forget
                if o.subject == it.subject and o is not it and it.value.lower() not in o.answer.lower()
            ]
            assert s[: -len(it.question)].count(it.subject) == min(k, len(own)) >= 1 and it.answer not in s
            assert it.subject not in o[: -len(it.question)]  # the control speaks of another person
    # a value that another fact of the person mentions keeps that fact out of the context
    a = QAItem(
        "Where was Ann born?",
        "Ann was born in Velmora.",
        subject="Ann",
        attribute="birthplace",
        value="Velmora",
        id="a",
    )
    b = QAItem(
        "What did Ann write?",
        "Ann wrote Ashes of Velmora.",
        subject="Ann",
        attribute="book",
        value="Ashes of Velmora",
        id="b",
    )
    c = QAItem(
        "What does Ann play?", "Ann plays the harp.", subject="Ann", attribute="instrument", value="the harp", id="c"
    )
    d = QAItem(
        "What does Bo play?", "Bo plays the lute.", subject="Bo", attribute="instrument", value="the lute", id="d"
    )
    asked, same, _ = context_prompts([a, b, c, d], 4, seed=0)
    assert same[asked.index(a)] == "Ann plays the harp. Where was Ann born?"


# --- representation ---------------------------------------------------------------------------------------------


def test_representation_pure_parts(tiny_tokenizer, forget):
    assert content_start("the oboe") == 4 and content_start("a grey heron") == 2
    assert content_start("Velmora") == 0 and content_start("The") == 0 and content_start("an old mule") == 3
    for it in forget:
        k, tid = value_token(tiny_tokenizer, it)
        ids = tiny_tokenizer(it.answer, add_special_tokens=False)["input_ids"]
        assert ids[k] == tid
        first_word = it.value[content_start(it.value) :].split()[0]
        assert first_word.startswith(tiny_tokenizer.decode([tid]).strip())
        assert it.value[content_start(it.value) :] not in tiny_tokenizer.decode(ids[:k])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=gen)
    y = ["p" if v > 0 else "n" for v in x[:, 0]]
    assert probe_accuracy(x[:40].numpy(), y[:40], x[40:].numpy(), y[40:]) >= 0.9


def test_final_norm_of_llama(tiny_tokenizer):
    from tests.conftest import tiny_model

    model = tiny_model(tiny_tokenizer)
    assert final_norm(model) is model.model.norm


# --- options and runs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options",
    [
        ("in_context", {"k_facts": 0}),
        ("probes", {"per_category": 0}),
        ("representation", {"max_items": 0}),
        ("representation", {"train_items": 1}),
        ("quantize", {"bits": "64"}),
        ("mia", {"max_items": 1}),
        ("mia", {"nope": 3}),
    ],
)
def test_bad_options(name, options):
    with pytest.raises(UsageError):
        ATTACKS.get(name).from_options(options)


EXPECTED = {
    "in_context": {
        "no_context_value_acc",
        "context_value_acc",
        "control_value_acc",
        "context_value_rouge",
        "context_gain_value_acc",
        "context_vs_control_value_acc",
        "n_items",
    },
    "probes": {f"{c}_value_acc" for c in ("original", *CATEGORIES)} | {"any_value_acc", "retain_implied_value_acc"},
    "representation": {
        "probe_acc_layer0",
        "probe_acc_layer2",
        "probe_answer_acc_layer2",
        "logit_lens_top1_layer1",
        "logit_lens_prob_layer2",
        "logit_lens_cand_acc_layer0",
        "n_items",
        "n_train",
    },
    "quantize": {
        "fp32_value_acc",
        "int8_value_acc",
        "int4_value_rouge",
        "int4_retain_value_acc",
        "recovered_value_acc_int4",
    },
    "mia": {"mia_loss_auc", "mia_zlib_auc", "mia_mink_auc", "mia_minkpp_auc", "forget_loss", "holdout_loss"},
}
BUDGETS = {
    "in_context": {"k_facts": 2},
    "probes": {"per_category": 6},
    "representation": {"train_items": 60},
    "quantize": {"bits": "8,4"},
    "mia": {"max_items": 10},
}


@pytest.fixture(scope="module")
def trained(target_dir):
    from obliviate.models.load import load_model

    torch.manual_seed(0)
    return load_model(str(target_dir))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_attack_runs_on_the_tiny_target(name, trained, world_dir):
    model, tok = trained
    ctx = AuditContext(suite="world", data=world_dir, limit=10, max_new_tokens=12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    figures = ATTACKS.get(name).from_options(BUDGETS[name]).run(ctx, model, tok)
    assert EXPECTED[name] <= set(figures)
    assert all(isinstance(v, float) and math.isfinite(v) for v in figures.values()), figures
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is left unchanged
    if name == "representation":
        assert figures["n_items"] == 10 and figures["n_train"] == 60
        assert all(0 <= v <= 1 for k, v in figures.items() if not k.startswith("n_"))


def test_the_audit_plans_them_for_the_world_suite_only():
    from obliviate.audit.runner import plan

    assert set(EXPECTED) <= set(plan("world", None))
    for name in EXPECTED:
        with pytest.raises(UsageError):
            plan("refusal", [name])


def test_limit_starts_each_attack_from_its_quick_budget_and_given_options_win():
    from obliviate.audit.runner import plan

    full = plan("world", ["relearn", "representation"])
    quick = plan("world", ["relearn", "representation"], {"relearn": {"steps": "3"}}, quick=True)
    assert (full["relearn"].steps, full["relearn"].batch_size) == (20, 16)  # the documented defaults
    assert full["representation"].train_items == 1000
    assert (quick["relearn"].steps, quick["relearn"].batch_size) == (3, 8)  # steps given; batch from `quick`
    assert quick["representation"].train_items == 200
    for suite, names in (("refusal", ["finetune", "refusal_direction"]), ("world", ["relearn", "representation"])):
        for name, attack in plan(suite, names, quick=True).items():
            assert attack.quick and all(getattr(attack, k) == v for k, v in attack.quick.items()), name


def test_relearn_measures_at_most_limit_items_of_each_share(trained, world_dir, monkeypatch):
    import obliviate.audit.attacks.relearn as relearn

    model, tok = trained
    measured, real = [], relearn.rouge_on
    monkeypatch.setattr(relearn, "rouge_on", lambda m, t, items, n: measured.append(len(items)) or real(m, t, items, n))
    ctx = AuditContext(suite="world", data=world_dir, limit=3, max_new_tokens=4)
    figures = relearn.Relearn(steps=1, batch_size=2).run(ctx, model, tok)
    assert measured == [3, 3, 3] and len(ctx.forget_items()) > 6  # before, after (held out), after (shown)
    assert 0 <= figures["heldout_after_rouge"] <= 1
