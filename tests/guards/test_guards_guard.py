"""GUARD (Deng et al. 2025): the token and semantic penalties by hand, and the guard under greedy decoding and
under transformers' beam search."""

import pytest
import torch

from obliviate.data.schema import load_qa
from obliviate.engine.generation import Row, decode, left_pad
from obliviate.guards.base import load_guard, save_guard
from obliviate.guards.guard_decoding import GuardDecoding
from obliviate.models.encode import prompt_ids
from obliviate.models.load import load_model


def test_token_matching_bans_the_next_token_of_a_started_sequence():
    g = GuardDecoding(semantic_penalty=0.0)
    g._seqs = [[5, 6, 7], [9]]
    assert g.banned([]) == {5, 9}
    assert g.banned([1, 5]) == {5, 9, 6}
    assert g.banned([5, 6]) == {5, 9, 7}
    logits = torch.zeros(10)
    out = g.penalise([1, 5], logits)
    assert out.tolist() == [0, 0, 0, 0, 0, -100.0, -100.0, 0, 0, -100.0]


def test_semantic_matching_penalises_near_synonyms_by_their_similarity():
    g = GuardDecoding(token_penalty=0.0, semantic_penalty=10.0, sim_threshold=0.9, top_m=3)
    g._seqs = [[2]]
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.05], [0.6, 0.8]])  # token 0 ~ token 2 (cos 0.9988)
    g._emb = torch.nn.functional.normalize(emb, dim=-1)
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])  # top-3 candidates: 0, 1, 2
    out = g.penalise([], logits)
    cos02 = float(g._emb[0] @ g._emb[2])
    assert out[0].item() == pytest.approx(3.0 - 10.0 * cos02)
    assert out[1].item() == 2.0  # cos 0.05: below the threshold
    assert out[2].item() == pytest.approx(1.0 - 10.0)  # the banned token itself: similarity 1 (no token penalty)
    assert out[3].item() == 0.0  # not among the top-m


@pytest.fixture(scope="module")
def setup(target_dir, world_dir):
    model, tok = load_model(str(target_dir))
    forget = load_qa(world_dir / "forget10.jsonl")[:24]
    retain = load_qa(world_dir / "retain90.jsonl")[:60]
    return model, tok, {"forget": forget, "retain": retain}


def test_guard_keeps_flagged_replies_off_the_forbidden_sequences(setup, tmp_path):
    model, tok, inputs = setup
    g = GuardDecoding.fit(model, tok, inputs)
    save_guard(g, tmp_path / "g")
    g = load_guard(tmp_path / "g", model, tok)
    assert g._seqs and g.report(model, tok, inputs)["gate_flag_rate_forget"] >= 0.9
    items = inputs["forget"][:4] + inputs["retain"][:2]
    ids = [prompt_ids(tok, it.question) for it in items]
    plain = decode(model, tok, ids, guards=[], max_new_tokens=12)
    reps = decode(model, tok, ids, guards=[g], texts=[it.question for it in items], max_new_tokens=12)
    starts = {s[0] for s in g._seqs}
    for rep, p in zip(reps, plain):
        if rep.scores["guard"] >= g.threshold:
            assert not starts & set(rep.token_ids)  # no forbidden sequence even starts
        else:
            assert rep.text == p.text


def test_guard_under_beam_search(setup):
    model, tok, inputs = setup
    g = GuardDecoding.fit(model, tok, inputs)
    g.attach(model, tok)
    items = inputs["forget"][:2]
    ids, mask = left_pad([prompt_ids(tok, it.question) for it in items], tok.pad_token_id)
    flagged = [g.on_request(it.question) >= g.threshold for it in items]
    assert all(flagged)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=10,
            num_beams=3,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            logits_processor=[g.logits_processor(ids.shape[1], flagged, 3)],
        )
    starts = {s[0] for s in g._seqs}
    for row in out[:, ids.shape[1] :].tolist():
        assert not starts & set(row)
    rows = [Row(0, items[0].question)]
    rows[0].scores["guard"] = 1.0
    assert g.process_logits(0, torch.empty(1, 0, dtype=torch.long), torch.zeros(1, len(tok)), rows)[0, min(starts)] < 0
