"""Architecture-agnostic residual-stream anatomy (`models.anatomy`) and the refusal-direction edits built on it,
on tiny random models of several families: what the hooks compute, the weights compute, on every architecture
whose writes end in one linear projection; the others refuse weight editing with a UsageError."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from obliviate.audit.attacks.refusal_direction import ablation, addition, orthogonalize
from obliviate.core.errors import UsageError
from obliviate.models.anatomy import anatomy, decoder_layers

SMALL = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=48,
    num_key_value_heads=2,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
FAMILIES = {
    # family: (config kwargs, writers per layer, weights can be orthogonalised)
    "llama": (SMALL, 2, True),
    "qwen2": (SMALL, 2, True),
    "gpt2": (dict(n_embd=32, n_layer=3, n_head=4, vocab_size=64, bos_token_id=1, eos_token_id=2), 2, True),
    "opt": (dict(SMALL, ffn_dim=48, word_embed_proj_dim=32), 2, True),
    "gpt_neox": (SMALL, 2, True),  # parallel residual
    "falcon": (dict(SMALL, new_decoder_architecture=False, parallel_attn=True), 2, True),
    "gemma2": (dict(SMALL, head_dim=8), 2, False),  # post-norms
    "olmo2": (SMALL, 2, False),  # post-norms, no pre-norms
    # mixtures of experts (transformers 5 fuses the experts into [E, ...] tensors): orthogonalised through the
    # write axes models.anatomy.expert_slots finds. Mixtral with expert width = d (both axes of down_proj are d),
    # Qwen2-MoE with a gated shared expert, gpt-oss with expert biases, DeepSeek-V3 with MLA and a dense layer 0
    "mixtral": (dict(SMALL, num_local_experts=4, num_experts_per_tok=2, intermediate_size=32), 2, True),
    "qwen2_moe": (
        dict(SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24),
        2,
        True,
    ),
    "gpt_oss": (dict(SMALL, num_local_experts=4, num_experts_per_tok=2, intermediate_size=24, head_dim=8), 2, True),
    # Llama 4 adds its routed experts in place into its shared expert's output: that projection's output *is*
    # the block's output (same storage) without being all that it writes
    "llama4_text": (
        dict(
            SMALL,
            intermediate_size=32,
            intermediate_size_mlp=48,
            num_local_experts=4,
            num_experts_per_tok=1,
            head_dim=8,
            interleave_moe_layer_step=1,
        ),
        2,
        True,
    ),
    "deepseek_v3": (
        dict(
            SMALL,
            num_key_value_heads=4,
            moe_intermediate_size=16,
            first_k_dense_replace=1,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            kv_lora_rank=16,
            q_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=8,
        ),
        2,
        True,
    ),
}


def _model(family):
    kwargs, _, _ = FAMILIES[family]
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(family, **kwargs)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # random biases, so the edits have to handle them (zero in a fresh init)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def _unit(d, seed=0):
    r = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return r / r.norm()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_anatomy_finds_layers_and_writers(family):
    model = _model(family)
    anat = anatomy(model)
    assert len(anat.layers) == 3 == len(decoder_layers(model)) and anat.d_model == 32
    assert [len(w) for w in anat.writers] == [FAMILIES[family][1]] * 3
    assert not any(isinstance(w, torch.nn.Dropout) for w in anat.all_writers)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ablation_and_orthogonalisation_on_every_family(family):
    model = _model(family)
    r_hat = _unit(32)
    ids = torch.tensor([[3, 7, 11, 5, 9]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with ablation(model, r_hat):
            out = model(input_ids=ids, output_hidden_states=True)
    # every residual state between layers has no component along r_hat (the last one is after the final norm)
    assert all((h @ r_hat).abs().max() < 1e-5 for h in out.hidden_states[:-1])
    assert not torch.allclose(plain, out.logits, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, plain)  # hooks removed
    if FAMILIES[family][2]:
        orthogonalize(model, r_hat)
        with torch.no_grad():
            assert torch.allclose(model(input_ids=ids).logits, out.logits, atol=1e-4)
    else:
        with pytest.raises(UsageError, match="cannot be orthogonalised|does not fit"):
            orthogonalize(model, r_hat)


def test_addition_on_a_non_llama_family():
    model = _model("gpt2")
    r = 2 * _unit(32, 1)
    ids = torch.tensor([[3, 7, 11]])
    with torch.no_grad():
        base = model(input_ids=ids, output_hidden_states=True).hidden_states[1]
        with addition(model, r, 1):
            seen = {}

            def record(mod, args, kwargs):
                seen.setdefault("x", args[0] if args else kwargs["hidden_states"])

            h = decoder_layers(model)[1].register_forward_pre_hook(record, with_kwargs=True)
            model(input_ids=ids)
            h.remove()
    assert torch.allclose(seen["x"], base + r, atol=1e-5)


def test_a_model_without_a_layer_list_is_a_usage_error():
    model = _model("llama")
    model.config.num_hidden_layers = 7
    with pytest.raises(UsageError, match="decoder layers"):
        anatomy(model)


@pytest.mark.parametrize(
    "family,path",
    [
        ("llama", "model.norm"),
        ("gpt2", "transformer.ln_f"),
        ("opt", "model.decoder.final_layer_norm"),
        ("gpt_neox", "gpt_neox.final_layer_norm"),
        ("olmo2", "model.norm"),
    ],
)
def test_final_norm_is_what_the_head_reads(family, path):
    from obliviate.models.anatomy import final_norm

    model = _model(family)
    assert final_norm(model) is model.get_submodule(path)


def test_project_out_by_hand():
    """W [2, 3] written along axis 0 (a Linear's columns), u = (0.6, 0.8): each column c becomes c - (u.c) u."""
    from obliviate.models.anatomy import project_out

    w = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])
    project_out(w, 0, torch.tensor([0.6, 0.8]))
    assert torch.allclose(w, torch.tensor([[0.64, -0.48, 0.8], [-0.48, 0.36, -0.6]]), atol=1e-6)
    e = torch.tensor([[[1.0, 0.0], [2.0, 1.0]]])  # [E=1, ff=2, d=2], written along axis 2
    project_out(e, 2, torch.tensor([1.0, 0.0]))
    assert torch.equal(e, torch.tensor([[[0.0, 0.0], [0.0, 1.0]]]))


def test_expert_slots_are_the_write_axes_only():
    """On a tiny Mixtral whose expert width equals d, of the [E, d, d] down projection only the output axis is a
    write axis; the router and the experts' input projections are read axes."""
    from obliviate.models.anatomy import expert_slots

    model = _model("mixtral")
    moe = anatomy(model).writers[0][1]
    slots = expert_slots(moe, 32)
    names = {id(p): n for n, p in moe.named_parameters()}
    assert [(names[id(p)], axis) for p, axis in slots] == [("experts.down_proj", 1)]
    assert expert_slots(anatomy(_model("gemma2")).writers[0][0], 32) is None  # a post-norm: not linear


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_moe_orthogonalisation_in_bfloat16(family):
    """The write-axis test runs on a float32 copy of the block: in bfloat16 a write axis's rounding error is about
    the test's tolerance, and every MoE was refused. The edited bf16 weights match the bf16 hooks."""
    model = _model(family).to(torch.bfloat16)
    r_hat = _unit(32).to(torch.bfloat16)
    ids = torch.tensor([[3, 7, 11, 5, 9]])
    with torch.no_grad(), ablation(model, r_hat):
        hooked = model(input_ids=ids).logits.float()
    orthogonalize(model, r_hat)
    with torch.no_grad():
        edited = model(input_ids=ids).logits.float()
    assert (edited - hooked).abs().max() <= 0.02 * hooked.abs().max()
