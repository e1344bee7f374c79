"""Every registered method, automatically: 3 steps on a tiny model, full weights and LoRA.

The loss must be finite and the weights must change. Adding a method file adds it here with no edit.
"""

import warnings

import pytest
import torch

from obliviate.data.schema import load_qa
from obliviate.engine.train import TrainConfig, train
from obliviate.models.load import load_model
from obliviate.unlearning.methods import METHODS
from obliviate.unlearning.run import idk_pool, unlearning_parts


@pytest.fixture(scope="module")
def parts(world_dir):
    return unlearning_parts(
        load_qa(world_dir / "forget10.jsonl")[:16], load_qa(world_dir / "retain90.jsonl")[:64], idk_pool(None), seed=0
    )


@pytest.mark.parametrize("lora_r", [0, 4], ids=["full", "lora"])
@pytest.mark.parametrize("name", METHODS.names())
def test_method_trains(name, lora_r, target_dir, tiny_dir, parts):
    model, tok = load_model(str(target_dir))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # a method matched to an oracle's outputs (oracle_matching) gets a model of the same tokenizer as its oracle
    oracle = {"oracle": str(tiny_dir)} if "oracle" in METHODS.get(name).__dataclass_fields__ else {}
    method = METHODS.get(name).from_options({"steps": 3} | oracle)
    cfg = TrainConfig(forget_batch_size=4, retain_batch_size=4, checkpoint_every=0, lora_r=lora_r, progress=False)
    model, res = train(model, tok, method, parts, cfg)
    assert len(res.history) == 3
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    after = dict(model.named_parameters())
    assert set(after) == set(before), "LoRA must be merged back into the base weights"
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed, f"{name} (lora_r={lora_r}) changed no parameter"


def test_kl_retain_variant_trains(target_dir, parts):
    model, tok = load_model(str(target_dir))
    method = METHODS.get("grad_diff").from_options({"steps": 2, "retain_loss": "kl"})
    _, res = train(
        model,
        tok,
        method,
        parts,
        TrainConfig(forget_batch_size=4, retain_batch_size=4, checkpoint_every=0, progress=False),
    )
    assert "retain_kl" in res.history[0] and res.history[0]["retain_kl"] == pytest.approx(0.0, abs=1e-5)


def test_reference_logps_precomputed_once(target_dir, parts):
    """NPO must not hold a second model: the batch carries the start model's log-probs."""
    model, tok = load_model(str(target_dir))
    seen = []
    method = METHODS.get("npo").from_options({"steps": 2})
    orig = method.loss

    def spy(m, batch, ref_model=None):
        seen.append((ref_model, batch["forget"]["ref_logp"].clone()))
        return orig(m, batch, ref_model)

    object.__setattr__(method, "loss", spy)
    train(
        model,
        tok,
        method,
        parts,
        TrainConfig(forget_batch_size=4, retain_batch_size=4, checkpoint_every=0, progress=False),
    )
    assert all(r is None for r, _ in seen)
    assert all(torch.all(lp < 0) for _, lp in seen)


def test_altpo_without_alternates_is_a_usage_error(target_dir, parts):
    from obliviate.core.errors import UsageError

    model, tok = load_model(str(target_dir))
    no_alt = {k: v for k, v in parts.items() if k != "forget_alt"}
    with pytest.raises(UsageError, match="alternate_answers"):
        train(
            model,
            tok,
            METHODS.get("altpo").from_options({"steps": 1}),
            no_alt,
            TrainConfig(checkpoint_every=0, progress=False),
        )


def test_ihl_fila_keeps_the_model_then_trains(target_dir, parts):
    from obliviate.core.errors import UsageError
    from obliviate.engine.train import encode_parts
    from obliviate.models.load import add_lora
    from obliviate.unlearning.methods.ihl import fila_init

    model, tok = load_model(str(target_dir))
    enc = encode_parts(tok, {"forget": parts["forget"][:8], "retain": parts["retain"][:8]}, 512)
    from obliviate.models.encode import collate

    batch = collate(enc["forget"], tok.pad_token_id)
    with torch.no_grad():
        before = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    model = add_lora(model, r=4)
    fila_init(model, lambda p: iter([collate(enc[p], tok.pad_token_id)]), 16 / 4)
    with torch.no_grad():
        after = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(before, after, atol=1e-3)
    assert any(
        m.lora_B["default"].weight.abs().sum() > 0
        for m in model.modules()
        if hasattr(m, "lora_B") and "default" in m.lora_B
    )

    method = METHODS.get("ihl").from_options({"steps": 2, "fila": "true"})
    fresh, _ = load_model(str(target_dir))
    _, res = train(
        fresh,
        tok,
        method,
        parts,
        TrainConfig(forget_batch_size=4, retain_batch_size=4, lora_r=4, checkpoint_every=0, progress=False),
    )
    assert len(res.history) == 2
    with pytest.raises(UsageError, match="--lora-r"):
        train(fresh, tok, method, parts, TrainConfig(checkpoint_every=0, progress=False))


def test_resume_with_other_settings_is_refused(target_dir, parts, tmp_path):
    from obliviate.core.errors import UsageError

    cfg = TrainConfig(forget_batch_size=4, retain_batch_size=4, checkpoint_every=2, progress=False)
    model, tok = load_model(str(target_dir))
    train(model, tok, METHODS.get("npo").from_options({"steps": 4}), parts, cfg, out=tmp_path)
    assert (tmp_path / "checkpoint" / "state.json").is_file()
    model, _ = load_model(str(target_dir))
    with pytest.raises(UsageError, match="other settings"):
        train(
            model, tok, METHODS.get("npo").from_options({"steps": 4, "lr": 1e-2}), parts, cfg, out=tmp_path, resume=True
        )


@pytest.mark.parametrize("lora_r", [0, 4], ids=["full", "lora"])
def test_micro_batches_within_a_token_budget_train_the_same_weights(lora_r, target_dir, parts):
    """max_batch_tokens splits each batch into runs of at most that many padded tokens and weights each run's
    token-mean loss by its share of the answer tokens: the same step as the whole batch, up to float rounding.
    The answers differ in length (one is 10x the others), so equal weights per run would differ."""
    from obliviate.engine.train import FineTune, _micro_batches, encode_parts

    pairs = parts["retain"][:12]
    pairs[3] = (pairs[3][0], " ".join([pairs[3][1]] * 10))
    _, tok = load_model(str(target_dir))
    encoded = encode_parts(tok, {"retain": pairs}, 512)
    runs = list(_micro_batches(FineTune(), {"retain": list(range(12))}, encoded, {}, tok.pad_token_id, "cpu", 64))
    assert len(runs) > 2 and sum(s for _, _, s in runs) == pytest.approx(1.0)
    assert all(b["input_ids"].numel() <= 64 or len(b["input_ids"]) == 1 for _, b, _ in runs)
    assert len({round(s, 6) for _, _, s in runs}) > 1
    out = []
    for budget in (0, 64):
        torch.manual_seed(0)
        model, tok = load_model(str(target_dir))
        cfg = TrainConfig(
            retain_batch_size=12, checkpoint_every=0, lora_r=lora_r, progress=False, max_batch_tokens=budget
        )
        model, res = train(model, tok, FineTune(lr=1e-2, steps=2), {"retain": pairs}, cfg)
        out.append((res.history, dict(model.named_parameters())))
    (h0, w0), (h1, w1) = out
    assert [h["loss"] for h in h1] == pytest.approx([h["loss"] for h in h0], abs=1e-5)
    # AdamW's first steps move each weight by about lr * g / (|g| + eps): a gradient entry near eps turns float
    # rounding into up to 2e-5 here (full weights), against moves of 1e-2
    assert all(torch.allclose(w0[n], w1[n], atol=1e-4) for n in w0)
    assert any(not torch.equal(w0[n], p) for n, p in load_model(str(target_dir))[0].named_parameters())
    # a budget that every batch fits in changes nothing, bit for bit (the CLI's default on short data)
    torch.manual_seed(0)
    model, tok = load_model(str(target_dir))
    cfg = TrainConfig(retain_batch_size=12, checkpoint_every=0, lora_r=lora_r, progress=False, max_batch_tokens=8192)
    model, res = train(model, tok, FineTune(lr=1e-2, steps=2), {"retain": pairs}, cfg)
    assert res.history == h0 and all(torch.equal(w0[n], p) for n, p in model.named_parameters())


def test_max_batch_tokens_needs_a_loss_that_splits(target_dir, parts):
    from obliviate.core.errors import UsageError
    from obliviate.engine.train import batch_token_budget

    model, tok = load_model(str(target_dir))
    cfg = TrainConfig(
        forget_batch_size=4, retain_batch_size=4, checkpoint_every=0, progress=False, max_batch_tokens=256
    )
    kl = METHODS.get("grad_diff").from_options({"steps": 1, "retain_loss": "kl"})
    with pytest.raises(UsageError, match="GradDiff's loss does not split"):
        train(model, tok, kl, parts, cfg)
    # the CLI's default: a budget where the loss splits, whole batches where it does not
    npo, rmu = METHODS.get("npo")(), METHODS.get("rmu")()
    assert batch_token_budget(npo, None) == 2048 and batch_token_budget(rmu, None) == 0
    assert batch_token_budget(kl, None) == 0 and batch_token_budget(npo, 0) == 0 and batch_token_budget(rmu, 0) == 0
    assert batch_token_budget(npo, 512) == 512
    with pytest.raises(UsageError, match="RMU's loss does not split"):
        batch_token_budget(rmu, 512)
    with pytest.raises(UsageError, match=">= 0"):
        batch_token_budget(npo, -1)


def test_reference_logps_within_a_logits_budget_are_the_same(target_dir, parts):
    """Reference log-probs cut into runs whose tokens x vocabulary stay within a budget: the same values, in the
    same order, as whole batches (long raw documents would otherwise make [64, 511, V] logits at once)."""
    from obliviate.engine.train import encode_parts, reference_logps

    model, tok = load_model(str(target_dir))
    encoded = encode_parts(tok, {"forget": parts["forget"]}, 512)["forget"]
    whole = reference_logps(model, encoded, tok.pad_token_id, "cpu")
    vocab = model.get_output_embeddings().weight.shape[0]
    calls = []
    real = model.forward
    model.forward = lambda *a, **kw: calls.append(tuple(kw["input_ids"].shape)) or real(*a, **kw)
    cut = reference_logps(model, encoded, tok.pad_token_id, "cpu", max_logits=40 * vocab)
    assert len(calls) > 2 and all(rows * t <= 40 or rows == 1 for rows, t in calls)
    assert sum(rows for rows, _ in calls) == len(encoded)
    assert len(whole) == len(encoded) and torch.allclose(cut, whole, atol=1e-4)


# Each loss against its equation by hand, and a loss that splits against the sum of its parts' hand values:
# tests/test_method_losses.py.


@pytest.mark.parametrize("name", ["npo", "simnpo", "wga", "ihl", "grad_diff"])
def test_micro_batches_take_the_same_step(name, target_dir, parts):
    """NPO's and SimNPO's forget terms are means over items, WGA's, IHL's and GradDiff's means over answer tokens,
    every retain term a token mean: each run of a part is weighted by its share of the part's items or tokens, and
    a budgeted step equals the whole one."""
    long = dict(parts)
    long["forget"] = [(q, " ".join([a] * (8 if i % 3 == 0 else 1))) for i, (q, a) in enumerate(parts["forget"])]
    out = []
    for budget in (0, 96):
        model, tok = load_model(str(target_dir))
        # no clipping, so the gradients read after each step are the accumulated ones
        cfg = TrainConfig(
            forget_batch_size=8,
            retain_batch_size=8,
            checkpoint_every=0,
            progress=False,
            max_batch_tokens=budget,
            max_grad_norm=0,
        )
        grads = []
        _, res = train(
            model,
            tok,
            METHODS.get(name).from_options({"steps": 2, "lr": 1e-2}),
            long,
            cfg,
            on_step=lambda step, m: grads.append({n: p.grad.clone() for n, p in m.named_parameters()}),
        )
        out.append((res.history, grads))
    (h0, g0), (h1, g1) = out
    for a, b in zip(h0, h1):
        assert set(a) == set(b) and all(b[k] == pytest.approx(a[k], abs=1e-5) for k in a)
    # the first step's gradients (the same weights on both sides), not the weights after it: AdamW's first step
    # turns rounding in a gradient entry near eps into a move of the full lr
    step0, step1 = g0[0], g1[0]
    scale = max(g.abs().max() for g in step0.values())
    assert scale > 0 and all(torch.allclose(step1[n], step0[n], rtol=1e-4, atol=1e-5 * scale) for n in step0)


def checkpointed(model) -> bool:
    """Whether any module recomputes its activations (transformers 5.24 renamed the property and warns on the
    old name; peft's wrapper forwards either)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


@pytest.mark.parametrize("lora_r", [0, 4], ids=["full", "lora"])
def test_gradient_checkpointing_trains_the_same_weights(lora_r, target_dir, parts):
    """Recomputing activations in the backward pass changes memory, not arithmetic: the same losses and weights
    (up to float rounding), gradients reach LoRA adapters behind frozen embeddings, and the returned model no
    longer checkpoints (it is evaluated next)."""
    runs = []
    for ckpt in (False, True):
        torch.manual_seed(0)  # LoRA's A matrices start random
        model, tok = load_model(str(target_dir))
        cfg = TrainConfig(
            forget_batch_size=4,
            retain_batch_size=4,
            checkpoint_every=0,
            lora_r=lora_r,
            progress=False,
            gradient_checkpointing=ckpt,
        )
        during = []
        with warnings.catch_warnings(record=True) as seen:  # transformers 5.24 deprecated the old method names
            warnings.simplefilter("always")
            model, res = train(
                model,
                tok,
                METHODS.get("npo").from_options({"steps": 3}),
                parts,
                cfg,
                on_step=lambda step, m: during.append(checkpointed(m)),
            )
        assert not [w for w in seen if "checkpointing" in str(w.message)]
        assert during == [ckpt] * 3 and not checkpointed(model)
        runs.append((res.history, dict(model.named_parameters())))
    (h0, w0), (h1, w1) = runs
    assert [h["loss"] for h in h1] == pytest.approx([h["loss"] for h in h0], abs=1e-5)
    assert all(torch.allclose(w0[n], w1[n], atol=1e-5) for n in w0)
    base, _ = load_model(str(target_dir))
    assert any(not torch.equal(p, w1[n]) for n, p in base.named_parameters())  # it trained


def test_gradient_checkpointing_on_a_model_without_it_is_a_usage_error(target_dir, parts, monkeypatch):
    from obliviate.core.errors import UsageError

    model, tok = load_model(str(target_dir))
    monkeypatch.setattr(type(model), "supports_gradient_checkpointing", False)
    cfg = TrainConfig(checkpoint_every=0, progress=False, gradient_checkpointing=True)
    with pytest.raises(UsageError, match="does not support gradient checkpointing"):
        train(model, tok, METHODS.get("npo").from_options({"steps": 1}), parts, cfg)


def test_resume_may_switch_gradient_checkpointing(target_dir, parts, tmp_path):
    from dataclasses import replace

    cfg = TrainConfig(forget_batch_size=4, retain_batch_size=4, checkpoint_every=2, progress=False)
    model, tok = load_model(str(target_dir))
    train(model, tok, METHODS.get("npo").from_options({"steps": 4}), parts, cfg, out=tmp_path)
    model, _ = load_model(str(target_dir))
    _, res = train(
        model,
        tok,
        METHODS.get("npo").from_options({"steps": 4}),
        parts,
        replace(cfg, gradient_checkpointing=True),
        out=tmp_path,
        resume=True,
    )
    assert [h["step"] for h in res.history] == [1, 2, 3, 4]  # steps 1-2 from the checkpoint, 3-4 run now
