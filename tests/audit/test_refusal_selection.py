"""The refusal direction's candidate selection (Arditi et al. 2024, as their code): scores against hand-computed
values, the filter rules, `selection=fast` against `selection=full` (same choice, fewer passes, no generation)."""

import json
import math
import random

import pytest
import torch

from obliviate.audit.attacks import ATTACKS
from obliviate.audit.attacks.refusal_selection import (
    choose,
    chunks,
    discarded,
    kl_score,
    last_logprobs,
    refusal_score,
    residuals,
)
from obliviate.core.errors import UsageError
from obliviate.models.encode import prompt_ids
from obliviate.models.load import load_model
from tests.cli.test_cli import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_refusal_score_and_kl_by_hand():
    # p(refusal) = 0.1 + 0.1 = 0.2: log(0.2 + 1e-8) - log(0.8 + 1e-8) = log(0.25) = -1.3862944
    logp = torch.log(torch.tensor([[0.1, 0.1, 0.5, 0.3], [0.0, 0.0, 0.5, 0.5]], dtype=torch.float64))
    assert refusal_score(logp, [0, 1]).tolist() == pytest.approx([math.log(0.25), math.log(1e-8)], abs=1e-6)
    # KL([.5, .5] || [.9, .1]) = .5 ln(.5/.9) + .5 ln(.5/.1) = 0.5108256; the 1e-6 smoothing moves it by < 1e-5
    base, abl = torch.tensor([[0.5, 0.5]]).log(), torch.tensor([[0.9, 0.1]]).log()
    assert kl_score(base, abl) == pytest.approx(0.5108256, abs=1e-5)
    assert kl_score(base, base) == 0.0


def test_filter_rules_follow_the_reference_code():
    def c(layer=3, bypass=-1.0, kl=0.05, induce=0.5):
        return {"layer": layer, "bypass": bypass, "kl": kl, "induce": induce}

    def out(cand, n_layers=30):
        return discarded(cand, n_layers, 0.1, 0.8)

    assert not out(c())
    assert not out(c(layer=23)) and out(c(layer=24))  # layer >= int(0.8 * 30) = 24
    assert out(c(layer=1), n_layers=2)  # int(0.8 * 2) = 1: the paper's l < 1.6 would keep layer 1
    assert not out(c(kl=0.1)) and out(c(kl=0.1000001))  # kl > 0.1 is discarded, kl = 0.1 kept
    assert not out(c(induce=0.0)) and out(c(induce=-1e-9))  # induce < 0 is discarded, 0 kept
    assert out(c(bypass=math.nan)) and out(c(kl=math.nan)) and out(c(induce=math.nan))
    assert not out({"layer": 3, "bypass": -1.0})  # scores not yet computed do not discard it


def _scored(c):
    return {"layer": c["layer"], "bypass": c["_bypass"], "kl": c["_kl"], "induce": c["_induce"]}


def _table(rng):
    n_layers = 10
    cands = []
    for layer in range(n_layers):
        for pos in (-2, -1):
            cands.append(
                {
                    "layer": layer,
                    "pos": pos,
                    "_bypass": rng.choice([0.0, 1.0, math.nan]) if rng.random() < 0.2 else rng.uniform(-5, 5),
                    "_kl": rng.uniform(0, 0.3),
                    "_induce": rng.uniform(-1, 1),
                }
            )
    return cands, n_layers


@pytest.mark.parametrize("seed", range(40))
def test_fast_choice_equals_full_with_fewer_scores(seed):
    """Random score tables (ties, NaNs, tables where nothing passes): the lazy walk picks what scoring everything
    picks, reports the same three scores for it, and computes no more scores."""
    rng = random.Random(seed)
    cands, n_layers = _table(rng)
    kl_max = rng.choice([0.1, 0.02])
    got = {}
    for lazy in (False, True):
        calls = []
        table = [dict(c) for c in cands]

        def score(c, key):
            calls.append((c["layer"], c["pos"], key))
            c[key] = c["_" + key]

        best, passed = choose(table, score, n_layers, kl_max, 0.8, lazy=lazy)
        assert len(set(calls)) == len(calls)  # no score computed twice
        got[lazy] = ((best["layer"], best["pos"]), passed, [best[k] for k in ("bypass", "kl", "induce")], len(calls))
    assert got[True][:2] == got[False][:2]
    assert str(got[True][2]) == str(got[False][2])  # NaN-safe equality
    assert got[True][3] <= got[False][3] == 3 * len(cands)
    # the reference's rule by hand: lowest bypass among the passing, first in candidate order on ties
    ok = [c for c in cands if not discarded(_scored(c), n_layers, kl_max, 0.8)]
    if ok:
        want = min(ok, key=lambda c: c["_bypass"])
        assert got[True][:2] == ((want["layer"], want["pos"]), True)


def test_fast_fallback_and_lazy_order_by_hand():
    cands = [
        {"layer": 0, "pos": -1, "_bypass": -3.0, "_kl": 0.5, "_induce": 1.0},  # lowest bypass, kl fails
        {"layer": 1, "pos": -1, "_bypass": -2.0, "_kl": 0.05, "_induce": 0.5},  # passes: chosen
        {"layer": 2, "pos": -1, "_bypass": -1.0, "_kl": 0.05, "_induce": 0.5},  # never scored beyond bypass
        {"layer": 9, "pos": -1, "_bypass": -9.0, "_kl": 0.0, "_induce": 9.0},  # past the layer cut: never scored
    ]
    calls = []

    def score(c, key):
        calls.append((c["layer"], key))
        c[key] = c["_" + key]

    best, passed = choose(cands, score, 10, 0.1, 0.8, lazy=True)
    assert (best["layer"], passed) == (1, True)
    assert calls == [(0, "bypass"), (1, "bypass"), (2, "bypass"), (0, "kl"), (1, "kl"), (1, "induce")]
    # nothing passes: the lowest bypass overall, the cut-off layers included, with all three scores reported
    for c in cands:
        c["_induce"] = -1.0
        for k in ("bypass", "kl", "induce"):
            c.pop(k, None)
    best, passed = choose(cands, score, 10, 0.1, 0.8, lazy=True)
    assert (best["layer"], passed, best["kl"], best["induce"]) == (9, False, 0.0, -1.0)


def test_length_chunks_keep_padding_bounded_and_order_back():
    lens = [45, 158, 43, 46, 37, 44, 44, 64, 43, 351]  # a HarmBench validation draw: one padded batch is 3,510
    prompts = [[1] * n for n in lens]
    got = chunks(prompts, by_length=True)
    assert sorted(i for c in got for i in c) == list(range(len(lens)))
    assert [[lens[i] for i in c] for c in got] == [[37, 43, 43, 44, 44, 45, 46], [64], [158], [351]]
    assert sum(len(c) * max(lens[i] for i in c) for c in got) == 7 * 46 + 64 + 158 + 351  # 895 padded tokens
    assert chunks(prompts) == [list(range(len(lens)))]  # file order: one chunk


def test_sorted_passes_with_a_shared_prefix_match_file_order(target_dir):
    """`by_length`: the shared prefix's keys and values computed once (under the same hooks) and reused, rows in
    length-sorted chunks: the same log-probabilities as full left-padded prompts in file order."""
    from obliviate.audit.attacks.refusal_direction import ablation
    from obliviate.audit.attacks.refusal_selection import shared_prefix

    model, tok = load_model(str(target_dir))
    texts = ["Who?", "Where was Vyrek Pellam born, and in which year was that?", "Hi", "x y z w"]
    prompts = [prompt_ids(tok, "Please tell me: " + q) for q in texts]
    assert shared_prefix(prompts) >= 4
    r = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    r_hat = r / r.norm()
    with ablation(model, r_hat):
        a, b = last_logprobs(model, tok, prompts), last_logprobs(model, tok, prompts, by_length=True)
    assert a.dtype == torch.float64 and torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, last_logprobs(model, tok, prompts), atol=1e-3)  # the hooks acted on both
    means = residuals(model, tok, prompts, 2), residuals(model, tok, prompts, 2, by_length=True)
    assert torch.allclose(*means, atol=1e-5)


def test_fast_select_on_a_model_same_choice_fewer_passes(world_dir, tiny_tokenizer):
    """`select` on a 6-layer untrained tiny model with the world's prompts: fast and full choose the same candidate
    with the same scores; fast takes fewer scoring passes; no reply is generated."""
    import obliviate.engine.generation as generation
    from obliviate.models.tiny import TinyModelConfig, build_model
    from obliviate.refusal.align import policy_rows

    cfg = TinyModelConfig(hidden_size=32, num_layers=6, num_heads=2, intermediate_size=64)
    model, tok = build_model(tiny_tokenizer, cfg, seed=1).eval(), tiny_tokenizer
    rows = policy_rows(world_dir, "policy_train")
    enc = [[prompt_ids(tok, r["prompt"]) for r in rows if r["kind"] == k] for k in ("harmful", "benign")]
    # an untrained model's next token is near uniform: with half the vocabulary as "refusal tokens" p is near 1/2,
    # so induce > 0 holds for some candidates and not others (with a few real refusal tokens it never holds)
    refusal_ids = list(range(0, model.config.vocab_size, 2))
    got = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generation, "generate", lambda *a, **k: pytest.fail("generate called"))
        for selection in ("full", "fast"):
            attack = ATTACKS.get("refusal_direction")(selection=selection, max_layer_frac=1.0)
            best, passed, n = attack.select(model, tok, enc[0][:8], enc[1][:8], enc[0][8:16], enc[1][8:16], refusal_ids)
            got[selection] = (best["layer"], best["pos"], passed, n, attack.passes, best)
    (*full, full_best), (*fast, fast_best) = got["full"], got["fast"]
    assert fast[:4] == full[:4] and full[3] >= 10 and full[4] == 3 * full[3] and fast[4] < full[4]
    for k in ("bypass", "kl", "induce"):
        assert fast_best[k] == pytest.approx(full_best[k], abs=1e-5)


def test_selection_option_is_checked():
    rd = ATTACKS.get("refusal_direction")
    assert rd.from_options({}).selection == "fast" and rd.from_options({"selection": "full"}).selection == "full"
    with pytest.raises(UsageError, match="selection must be one of fast, full"):
        rd.from_options({"selection": "generate"})


def test_both_selections_end_to_end_on_the_world(target_dir, world_dir, tmp_path, capsys, monkeypatch):
    """`obliviate audit --suite refusal --attacks refusal_direction` with each selection: the same direction, the
    fast one in fewer passes, and generation only for the chosen direction's final check (a call per set: harmful and
    benign before, ablated, added, orthogonalised), whatever the number of candidates."""
    import obliviate.engine.generation as generation
    import obliviate.refusal.evaluate as evaluate

    calls, real = [], generation.generate
    monkeypatch.setattr(generation, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(evaluate, "generate", generation.generate)  # the direct replies (`attacks.direct`)
    docs = {}
    for selection in ("full", "fast"):
        out = tmp_path / selection
        calls.clear()
        opts = ["n_train=4", "n_val=4", "positions=2", "max_layer_frac=1", f"selection={selection}", "save_model=false"]
        args = ["audit", target_dir, "--suite", "refusal", "--data", world_dir, "--out", out, "--limit", "4"]
        args += ["--attacks", "refusal_direction", "--threads", "1"]
        code, _, err = run_cli(args + [x for o in opts for x in ("--option", f"refusal_direction.{o}")], capsys)
        assert code == 0, err
        docs[selection] = json.loads((out / "audit.json").read_text())["attacks"]["refusal_direction"]["model"]
        docs[selection]["generate_calls"] = len(calls)
    full, fast = docs["full"], docs["fast"]
    # generation is the final check's alone: one call per set (harmful and benign before, ablated, added,
    # orthogonalised; --limit may leave no benign row), the same in both, not one per candidate
    assert full["generate_calls"] == fast["generate_calls"] in (3, 5)
    assert full["candidates"] == fast["candidates"] >= 2
    same = ("layer", "position", "filters_passed")
    assert [fast[k] for k in same] == [full[k] for k in same]
    assert full["selection_passes"] == 3 * full["candidates"] and fast["selection_passes"] <= full["selection_passes"]
    for k in ("bypass_score", "induce_score", "kl"):
        assert fast[k] == pytest.approx(full[k], abs=1e-4)


def test_the_direction_leaves_out_contextual_and_copyright_behaviours(tiny_tokenizer):
    """As the reference code's data does: HarmBench's contextual and copyright rows never reach the means or the
    selection (they are still measured on)."""
    from obliviate.audit.attacks import AuditContext
    from obliviate.models.encode import prompt_ids

    def row(i, kind, **kw):
        base = {"prompt": f"request number {i}", "kind": kind, "source": "harmbench", "category": "chemical"}
        return base | {"refusal": "I cannot help with that."} | kw

    plain = [row(i, "harmful") for i in range(6)]
    dropped = [row(10, "harmful", contextual=True), row(11, "harmful", category="copyright")]
    safe = [row(20 + i, "benign", source="xstest") for i in range(6)]
    ctx = AuditContext(suite="refusal", loaded=True, inputs={"policy_train": dropped + plain + safe, "policy_test": []})
    enc, _ = ATTACKS.get("refusal_direction")(n_train=2, n_val=1).encoded(ctx, tiny_tokenizer)
    used = {tuple(p) for part in enc for p in part}
    assert not used & {tuple(prompt_ids(tiny_tokenizer, r["prompt"])) for r in dropped}
    assert {tuple(prompt_ids(tiny_tokenizer, r["prompt"])) for r in plain[:3]} <= used
