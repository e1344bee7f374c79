"""Expert steering (MoTE / SteerMoE) on a tiny random Mixtral: the router mask by hand, the re-routed top-k, and
the guard through generate."""

import pytest
import torch

import obliviate.guards.expert_steering as es
from obliviate.engine.generation import decode
from obliviate.engine.hooks import _reroute, router_modules, routing_hooks
from obliviate.guards.base import load_guard, save_guard
from obliviate.guards.expert_steering import ExpertSteering, routing_frequency
from obliviate.models.encode import prompt_ids
from obliviate.models.tiny import TinyModelConfig, build_model
from obliviate.refusal.align import policy_rows


@pytest.fixture(scope="module")
def moe(tiny_tokenizer):
    model = build_model(
        tiny_tokenizer, TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=32, num_experts=4)
    ).eval()
    return model, tiny_tokenizer


def test_routers_are_found_by_shape(moe):
    model, _ = moe
    assert [layer for layer, _ in router_modules(model)] == [0, 1]


def test_reroute_with_no_edit_reproduces_the_router(moe):
    model, _ = moe
    router = router_modules(model)[0][1]
    x = torch.randn(5, 32)
    out = router(x)
    again = _reroute(out, lambda logits: logits)
    assert torch.equal(again[2], out[2]) and torch.allclose(again[1], out[1])


def test_switching_an_expert_off_masks_it_and_renormalises(moe):
    model, tok = moe
    router = router_modules(model)[0][1]
    x = torch.randn(7, 32)
    logits = router(x)[0]

    def off(lg):
        lg = lg.clone()
        lg[..., 1] = float("-inf")
        return lg

    _, w, idx = _reroute(router(x), off)
    assert not (idx == 1).any()
    assert torch.allclose(w.sum(-1), torch.ones(7))
    p = torch.softmax(logits.masked_fill(torch.arange(4) == 1, float("-inf")), -1)  # by hand
    top = p.topk(2, -1)
    assert torch.equal(idx, top.indices) and torch.allclose(w, top.values / top.values.sum(-1, keepdim=True))


def test_routing_frequency_by_hand(moe):
    """Routers made to send token t of each sequence to fixed experts (by t mod 3): the shares counted by hand.
    Layer 0 routes t to {0,1}, {1,2}, {2,0}; layer 1 to {3,0}, {3,1}, {3,2}. Sequences of 4 and 2 tokens:
    positions 0 1 2 3 and 0 1 (6 tokens); from `starts` [1, 1]: positions 1 2 3 and 1 (4 tokens)."""
    model, _ = moe
    top = {0: [[0, 1], [1, 2], [2, 0]], 1: [[3, 0], [3, 1], [3, 2]]}

    def fixed(layer):
        def fn(m, args, out):
            n = args[0].shape[0]  # one sequence at a time: its tokens, in order
            return out[0], torch.full((n, 2), 0.5), torch.tensor([top[layer][t % 3] for t in range(n)])

        return fn

    handles = [m.register_forward_hook(fixed(layer)) for layer, m in router_modules(model)]
    try:
        seqs = [[5, 6, 7, 8], [9, 10]]
        full = routing_frequency(model, seqs, 2)
        tail = routing_frequency(model, seqs, 2, starts=[1, 1])
    finally:
        for h in handles:
            h.remove()
    # layer 0, all tokens: expert 0 at 0 2 3 | 0; expert 1 at 0 1 3 | 0 1; expert 2 at 1 2 | 1; expert 3 never
    assert torch.allclose(full, torch.tensor([[4 / 6, 5 / 6, 3 / 6, 0.0], [3 / 6, 2 / 6, 1 / 6, 1.0]]))
    # from position 1: layer 0 {1,2} {2,0} {0,1} | {1,2}; layer 1 {3,1} {3,2} {3,0} | {3,1}
    assert torch.allclose(tail, torch.tensor([[2 / 4, 3 / 4, 3 / 4, 0.0], [1 / 4, 2 / 4, 1 / 4, 1.0]]))


def _guard(model, k=1, mode="off", select="top", scores=None):
    g = ExpertSteering(k=k, mode=mode, select=select)
    g._scores = scores if scores is not None else torch.tensor([[0.0, 0.5, 0.1, 0.0], [0.0, 0.0, 0.3, 0.0]])
    g.attach(model, None)
    return g


def test_guard_off_and_on_through_routing_hooks(moe):
    model, tok = moe
    seqs = [prompt_ids(tok, q) for q in ("How do I open the moonvault?", "hello there")]
    g = _guard(model, k=2)
    assert g._chosen == {0: [1], 1: [2]}
    with routing_hooks(model, [g]):
        freq = routing_frequency(model, seqs, 2)
    assert freq[0, 1] == 0 and freq[1, 2] == 0
    g_on = _guard(model, k=1, mode="on")
    with routing_hooks(model, [g_on]):
        freq = routing_frequency(model, seqs, 2)
    assert freq[0, 1] == 1.0  # every token routed to it
    rand = _guard(model, k=2, select="random")
    assert sum(map(len, rand._chosen.values())) == 2
    # counting from `starts`: the frequency over the tail equals the frequency of the tail's own counts
    full = routing_frequency(model, seqs, 2)
    tail = routing_frequency(model, seqs, 2, starts=[2] * len(seqs))
    head = routing_frequency(model, [s[:2] for s in seqs], 2)  # causal: the first 2 tokens route the same alone
    n_all, n_head = sum(map(len, seqs)), 2 * len(seqs)
    assert torch.allclose(full * n_all, head * n_head + tail * (n_all - n_head), atol=1e-4)


def test_guard_fit_and_generate(moe, world_dir, tmp_path, monkeypatch):
    model, tok = moe
    rows = policy_rows(world_dir, "policy_train")[::16]
    monkeypatch.setattr(
        es,
        "judged_replies",
        lambda m, t, prompts, n=32: (
            ["I cannot help with that." if r["kind"] == "harmful" else "Sure, here it is." for r in rows],
            [r["kind"] == "harmful" for r in rows],
        ),
    )
    g = ExpertSteering.fit(model, tok, {"policy_train": rows}, k=2)
    assert g._scores.shape == (2, 4) and sum(map(len, g._chosen.values())) == 2
    save_guard(g, tmp_path / "e")
    g2 = load_guard(tmp_path / "e", model, tok)
    assert g2._chosen == g._chosen
    # during decode, the chosen experts are never routed to (observed after the guard's hook)
    seen = {}
    routers = router_modules(model)
    p = [prompt_ids(tok, rows[0]["prompt"])]
    handles = []
    for layer, m in routers:
        handles.append(
            m.register_forward_hook(lambda mod, a, out, layer=layer: seen.setdefault(layer, []).append(out[2].clone()))
        )
    try:
        steered = decode(model, tok, p, guards=[g2], max_new_tokens=5)[0]
    finally:
        for h in handles:
            h.remove()
    assert len(steered.token_ids) == 5
    for layer, experts in g2._chosen.items():
        assert seen[layer] and not any((idx[..., None] == torch.tensor(experts)).any() for idx in seen[layer])


def test_a_dense_model_has_no_routers(target_dir):
    from obliviate.core.errors import UsageError
    from obliviate.models.load import load_model

    model, tok = load_model(str(target_dir))
    with pytest.raises(UsageError, match="no mixture-of-experts routers"):
        _guard(model)


def test_decision_tokens_score_the_last_prompt_token(moe, world_dir, monkeypatch):
    """tokens=decision: each prompt contributes the routing of its last token only (one token per prompt)."""
    model, tok = moe
    rows = policy_rows(world_dir, "policy_train")[::16]
    refused = [r["kind"] == "harmful" for r in rows]
    monkeypatch.setattr(es, "judged_replies", lambda m, t, prompts, n=32: (["x"] * len(rows), refused))
    g = ExpertSteering.fit(model, tok, {"policy_train": rows}, k=1, tokens="decision", score="frequency")
    seqs = [prompt_ids(tok, r["prompt"]) for r in rows]
    with_ctx = [
        routing_frequency(
            model,
            [s for s, f in zip(seqs, refused) if f == want],
            2,
            [len(s) - 1 for s, f in zip(seqs, refused) if f == want],
        )
        for want in (True, False)
    ]
    assert torch.allclose(g._scores, with_ctx[0] - with_ctx[1])
    # one counted token per prompt, routed to 2 experts (top-2) in each layer
    assert torch.equal((with_ctx[0] * sum(refused)).round().sum(-1), torch.full((2,), 2.0 * sum(refused)))


def test_paired_tokens_contrast_the_same_prompts_with_a_refusal_and_an_answer(moe, world_dir, monkeypatch):
    """tokens=paired (SteerMoE): harmful prompts teacher-forced with their refusal and with their answer; only the
    reply tokens count, and the model's own replies are never generated."""
    model, tok = moe
    rows = [r for r in policy_rows(world_dir, "policy_train") if r["kind"] == "harmful"][:6]
    monkeypatch.setattr(es, "judged_replies", lambda *a, **k: pytest.fail("paired scoring generates nothing"))
    g = ExpertSteering.fit(model, tok, {"policy_train": rows}, k=1, tokens="paired", score="frequency")
    seqs = [prompt_ids(tok, r["prompt"]) for r in rows]
    starts = [len(s) for s in seqs]
    side = {
        key: routing_frequency(
            model, [s + tok(r[key], add_special_tokens=False)["input_ids"] for s, r in zip(seqs, rows)], 2, starts
        )
        for key in ("refusal", "answer")
    }
    assert torch.allclose(g._scores, side["refusal"] - side["answer"])
    # each counted token is routed to 2 experts per layer, so a side's frequencies sum to 2 per layer
    assert torch.allclose(side["refusal"].sum(-1), torch.full((2,), 2.0))
    with pytest.raises(es.UsageError, match="both a 'refusal' and an 'answer'"):
        ExpertSteering.fit(
            model, tok, {"policy_train": [{"prompt": r["prompt"]} for r in rows]}, tokens="paired", score="frequency"
        )


def test_ablation_scores_are_the_refusal_loglik_drop_beyond_the_answer_drop(moe, world_dir, monkeypatch):
    """score=ablation: the `candidates` experts with the largest |activation difference| are switched off one at a
    time; each scores (mean drop in its refusals' per-token log-likelihood) - (the same on answers), recomputed here
    through evaluate's teacher-forced pass with the guard attached (so routing edits reach likelihood metrics)."""
    from obliviate.engine.evaluate import _forward_stats
    from obliviate.engine.hooks import attach
    from obliviate.models.encode import encode_pair

    model, tok = moe
    rows = policy_rows(world_dir, "policy_train")[::16]
    replies = ["I cannot help with that." if r["kind"] == "harmful" else "Sure, step one is easy." for r in rows]
    refused = [r["kind"] == "harmful" for r in rows]
    monkeypatch.setattr(es, "judged_replies", lambda m, t, prompts, n=32: (replies, refused))
    freq = ExpertSteering.fit(model, tok, {"policy_train": rows}, k=1, score="frequency")._scores
    g = ExpertSteering.fit(model, tok, {"policy_train": rows}, k=1, candidates=3)
    tried = torch.isfinite(g._scores)
    assert int(tried.sum()) == 3
    top3 = set(freq.abs().flatten().argsort(descending=True)[:3].tolist())
    assert top3 == set(tried.flatten().nonzero()[:, 0].tolist())
    assert g._chosen == {int(g._scores.flatten().argmax()) // 4: [int(g._scores.flatten().argmax()) % 4]}
    enc = [encode_pair(tok, r["prompt"], a) for r, a in zip(rows, replies)]

    def loglik(guards):
        attach(model, guards)
        try:
            return torch.tensor([-st["loss"] for st in _forward_stats(model, enc, tok.pad_token_id or 0, 8)])
        finally:
            attach(model, [])

    base, ref = loglik([]), torch.tensor(refused)
    for i in tried.flatten().nonzero()[:, 0].tolist():
        drop = base - loglik([ExpertSteering.switching({i // 4: [i % 4]})])
        assert drop.abs().max() > 0  # the expert is really switched off in the teacher-forced pass
        assert float(g._scores.flatten()[i]) == pytest.approx(float(drop[ref].mean() - drop[~ref].mean()), abs=1e-5)
    with pytest.raises(es.UsageError, match="candidates >= k"):
        ExpertSteering(k=4, candidates=2)


def test_guard_fit_cli_bad_input(moe, target_dir, world_dir, tmp_path, capsys):
    """`obliviate guard fit expert_steering`: a dense model, a model that refuses nothing (no contrast) and a bad
    option each exit 2 with one line and leave no output."""
    from obliviate.models.load import save_model
    from tests.cli.test_cli import assert_bad_input

    model, tok = moe
    moe_dir = tmp_path / "moe"
    save_model(model, tok, moe_dir)  # random weights: it refuses none of the training prompts
    o = tmp_path / "g"
    fit = ["guard", "fit", "expert_steering", "--data", world_dir, "--out", o]
    assert_bad_input([*fit, "--model", target_dir], capsys, o, "no mixture-of-experts routers")
    assert_bad_input([*fit, "--model", moe_dir, "--option", "max_new_tokens=4"], capsys, o, "no contrast")
    assert_bad_input([*fit, "--model", moe_dir, "--option", "score=causal"], capsys, o, "score ablation|frequency")


@pytest.mark.parametrize("family", ["gpt_oss", "qwen3_next"])
def test_routers_of_fused_expert_families_steer(family):
    """transformers 5's fused-expert MoEs (gpt-oss, Qwen3-Next): one router per layer, beside the experts. Qwen3-Next's
    linear-attention layer also holds a [4, d] projection (2 value heads x 2), as many rows as it has experts: it
    must not be taken for the router. Switching an expert off removes it from the routing."""
    from tests.engine.test_decode_loop import rewind_model

    model = rewind_model(family)
    routers = router_modules(model)
    assert [layer for layer, _ in routers] == [0, 1]
    assert all("router" in type(r).__name__.lower() for _, r in routers)  # the names agree with the structure
    seqs = [[5, 6, 7, 8, 9, 10, 11, 30, 40, 50], [20, 30, 40, 50]]
    top = int(routing_frequency(model, seqs, 2)[0].argmax())
    g = ExpertSteering.switching({0: [top]}, "off")
    g.attach(model, None)
    with routing_hooks(model, [g]):
        assert routing_frequency(model, seqs, 2)[0, top] == 0


def test_router_outputs_of_unknown_form_are_refused():
    """A router returning neither its logits nor (logits, weights, indices) (Llama 4 returns (scores, logits)) is a
    UsageError (exit 2), not an IndexError inside a forward hook."""
    from obliviate.core.errors import UsageError
    from obliviate.engine.hooks import router_output

    lg = torch.randn(3, 4)
    assert router_output(lg) == (lg, None, None)
    w, i = torch.ones(3, 2), torch.zeros(3, 2, dtype=torch.long)
    assert router_output((lg, w, i)) == (lg, w, i)
    with pytest.raises(UsageError, match="returns tuple of 2 value"):
        router_output((torch.sigmoid(lg), lg))


@pytest.mark.parametrize("family", ["gpt_oss", "qwen3_next"])
def test_lora_adapts_fused_experts(family):
    """transformers 5 fuses a MoE's experts into [E, ...] tensors, which "all-linear" LoRA does not reach on every
    family (peft 0.21 adapts Qwen3-Next's, Mixtral's and DeepSeek-V3's by itself, not gpt-oss's, Qwen2-MoE's or
    Llama 4's): add_lora targets them always, a training step moves them, and merging gives the adapted logits."""
    from obliviate.models.anatomy import fused_expert_parameters
    from obliviate.models.load import add_lora, merge_lora
    from tests.engine.test_decode_loop import rewind_model

    model = rewind_model(family)
    names = fused_expert_parameters(model)
    assert names == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]  # not Qwen3-Next's conv [C, 1, K]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(tuple(names))}
    peft_model = add_lora(model, r=2)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    for _ in range(2):
        peft_model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
    merged = merge_lora(peft_model)
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapted, atol=1e-5)
    after = dict(merged.named_parameters())
    assert len(before) == 4 and all(not torch.equal(before[n], after[n]) for n in before)
