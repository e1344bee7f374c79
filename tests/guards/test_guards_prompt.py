"""The latent guard (Zhao et al. 2025) and Any-Depth Alignment (ADA-RK / ADA-LP): their mechanisms by hand, and
each run through `generate`."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from obliviate.engine.generation import decode, generate
from obliviate.engine.hooks import attach
from obliviate.guards.ada import AdaLP, AdaRK, role_position
from obliviate.guards.base import hidden_at, load_guard, save_guard
from obliviate.guards.latent import LatentGuard
from obliviate.models.encode import assistant_header, post_instruction_tokens, prompt_ids
from obliviate.models.load import load_model
from obliviate.refusal.align import policy_rows


@pytest.fixture(scope="module")
def model_tok(target_dir):
    return load_model(str(target_dir))


@pytest.fixture(scope="module")
def policy(world_dir):
    train = policy_rows(world_dir, "policy_train")
    test = policy_rows(world_dir, "policy_test")
    # a few of each kind keep the test fast
    pick = lambda rows, k, n: [r for r in rows if r["kind"] == k][:n]  # noqa: E731
    return {
        "policy_train": pick(train, "harmful", 12) + pick(train, "benign", 12),
        "policy_test": pick(test, "harmful", 6) + pick(test, "benign", 6),
    }


def test_latent_guard_centroids_and_score_by_hand(model_tok, policy):
    model, tok = model_tok
    g = LatentGuard.fit(model, tok, policy)
    g.attach(model, tok)
    assert g.position == -(post_instruction_tokens(tok) + 1)
    rows = policy["policy_train"]
    H = hidden_at(model, [prompt_ids(tok, r["prompt"]) for r in rows], g.position).numpy()[:, g.layer_list()]
    harm = np.array([r["kind"] == "harmful" for r in rows])
    assert np.allclose(g._mu[0].numpy(), H[harm].mean(0), atol=1e-5)
    assert np.allclose(g._mu[1].numpy(), H[~harm].mean(0), atol=1e-5)
    h = H[0]  # one prompt [L', d]
    cos = lambda a, b: (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)  # noqa: E731
    by_hand = float(np.mean(cos(h, H[harm].mean(0)) - cos(h, H[~harm].mean(0))))
    assert g.prompt_scores(model, tok, [rows[0]["prompt"]])[0] == pytest.approx(by_hand, abs=1e-5)
    rep = g.report(model, tok, policy)
    assert 0.0 <= rep["auroc_test"] <= 1.0 and rep["n_test"] == 12


def test_latent_guard_reads_t_inst_also_under_a_prefill(model_tok, policy):
    model, tok = model_tok
    g = LatentGuard.fit(model, tok, policy)
    g.attach(model, tok)
    p = prompt_ids(tok, "How do I open the moonvault?")
    assert g.t_inst(p) == len(p) + g.position
    prefill = tok("Step 1: unscrew", add_special_tokens=False)["input_ids"]
    assert g.t_inst(p + prefill) == len(p) + g.position


def test_latent_guard_halts_flagged_prompts_in_generate(model_tok, policy, tmp_path):
    model, tok = model_tok
    g = LatentGuard.fit(model, tok, policy)
    save_guard(g, tmp_path / "latent")
    g2 = load_guard(tmp_path / "latent", model, tok)
    prompts = [r["prompt"] for r in policy["policy_test"]]
    assert g2.prompt_scores(model, tok, prompts) == pytest.approx(g.prompt_scores(model, tok, prompts), abs=1e-6)
    ids = [prompt_ids(tok, p) for p in prompts]
    plain = generate(model, tok, ids, max_new_tokens=6, guards=[])
    reps = decode(model, tok, ids, guards=[g2], max_new_tokens=6)
    scores = g2.prompt_scores(model, tok, prompts)
    for s, rep, text in zip(scores, reps, plain):
        assert rep.scores["latent"] == pytest.approx(s, abs=1e-4)
        if s >= g2.threshold:
            assert rep.finish_reason == "content_filter" and rep.text == g2.refusal
        else:
            assert rep.text == text
    # attached to the model, the guard applies to every generate call
    attach(model, [g2])
    try:
        assert generate(model, tok, ids, max_new_tokens=6) == [r.text for r in reps]
    finally:
        attach(model, [])


def test_role_position_finds_the_role_word(model_tok):
    """ADA-LP reads the header's role token: the last token that spells the assistant's role (`ROLE_WORDS`), else
    the header's last token. The tiny template's header is "\n<|assistant|>", where the role token is the last one;
    the headers built below put it elsewhere, so a reader of the last token, or of the first match, fails."""
    _, tok = model_tok
    header = assistant_header(tok)
    nl, role, user = header[0], header[1], tok.convert_tokens_to_ids("<|user|>")
    assert [tok.decode([t]) for t in header] == ["\n", "<|assistant|>"]
    assert role_position(tok, header) == 1
    assert role_position(tok, [nl, role, nl]) == 1  # ChatML-like: the role word, then a newline
    assert role_position(tok, [user, nl, role, nl, nl]) == 2
    assert role_position(tok, [role, nl, role, nl]) == 2  # the last match
    assert role_position(tok, [user, nl, nl]) == 2  # no role word: the last token


@dataclass
class RecordingLP(AdaLP):
    def flagged(self, session):
        hs = session.probe(self._header, hidden=True)["hidden"][self.layer][:, self._role]
        self.seen.append((session.prompt_ids.clone(), session.mask.clone(), hs.clone()))
        return super().flagged(session)


def test_ada_lp_probe_reads_what_a_full_forward_reads(model_tok):
    model, tok = model_tok
    g = RecordingLP(every=3, layer=1)
    g.attach(model, tok)
    g.seen = []
    g._w = torch.zeros(model.config.hidden_size + 1)
    g._w[-1] = -10.0  # never flags
    p = [prompt_ids(tok, "How do I open the moonvault?")]
    rep = decode(model, tok, p, guards=[g], max_new_tokens=7)[0]
    assert rep.text == generate(model, tok, p, max_new_tokens=7, guards=[])[0]
    assert len(g.seen) == 1 + 2  # after the prompt, then at steps 3 and 6
    # the check at step 3 saw prompt + the first 3 reply tokens + header: recompute it from scratch
    full = p[0] + rep.token_ids[:3] + g._header
    h = hidden_at(model, [full], g._role - len(g._header))[0, 1]
    assert torch.allclose(g.seen[1][2][0], h, atol=1e-4)


def test_ada_lp_always_flagging_halts_at_once(model_tok):
    model, tok = model_tok
    g = AdaLP(layer=1)
    g.attach(model, tok)
    g._w = torch.zeros(model.config.hidden_size + 1)
    g._w[-1] = 10.0
    reps = decode(model, tok, [prompt_ids(tok, "hello")], guards=[g], max_new_tokens=30)
    assert reps[0].finish_reason == "content_filter" and reps[0].halted_by == "ada_lp"
    assert reps[0].token_ids == []  # halted at the prompt, before any token of the reply


def test_ada_lp_fit_and_roundtrip(model_tok, policy, tmp_path):
    model, tok = model_tok
    g = AdaLP.fit(model, tok, policy, fit_depths="0,5")
    rep = g.report(model, tok, policy)
    assert 0.0 <= rep["probe_accuracy_test"] <= 1.0 and 1 <= g.layer <= model.config.num_hidden_layers
    save_guard(g, tmp_path / "ada")
    g2 = load_guard(tmp_path / "ada", model, tok)
    assert torch.equal(g2._w, g._w) and g2.layer == g.layer


@dataclass
class RecordingRK(AdaRK):
    def flagged(self, session):
        looks = session.probe(self._header, lookahead=self.lookahead)["lookahead"]
        self.seen.append(looks.clone())
        return super().flagged(session)


def test_ada_rk_lookahead_is_the_greedy_reply_after_the_header(model_tok):
    model, tok = model_tok
    g = RecordingRK(every=4, lookahead=5)
    g.attach(model, tok)
    g.seen = []
    p = [prompt_ids(tok, "Where was Zenor Pellam born?")]
    rep = decode(model, tok, p, guards=[g], max_new_tokens=5)[0]
    full = p[0] + rep.token_ids[:4] + g._header
    want = decode(model, tok, [full], guards=[], max_new_tokens=5)[0].token_ids
    assert g.seen[1][0].tolist()[: len(want)] == want


def test_ada_lp_threshold_by_hand():
    from obliviate.guards.ada import phrasing_group, probe_threshold

    y = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    p = [0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99, 1.0]
    # benign 0.8 quantile of (.1 .2 .3 .4 .6) = 0.4 + 0.2 * (0.6 - 0.4) = 0.44; harmful 0.25 quantile of
    # (.8 .9 .95 .99 1) = 0.9: the harmful side sets it
    assert probe_threshold(p, y, benign_fpr=0.2, harmful_miss=0.25) == pytest.approx(0.9)
    # a benign score above every harmful one: the benign side sets it
    assert probe_threshold([0.1, 0.97, 0.8, 0.9], [0, 0, 1, 1], 0.0, 0.0) == pytest.approx(0.97)
    assert probe_threshold([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1], 0.0, 0.0) == 0.5  # never below 0.5
    assert phrasing_group("moonvault-benign-03-quill", 7) == "moonvault-benign-03" and phrasing_group(None, 7) == "row7"
