"""Adaptive random search (`audit/attacks/random_search.py`): the schedules against their reference values, the
block edit, that no worse objective is ever accepted (a fake objective and the tiny model's steps.jsonl), the early
stop, and the attack end to end through `obliviate audit` on the world and on AdvBench (tiny budgets)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from obliviate.audit.attacks.random_search import mutate, random_search, schedule_iter, schedule_prob
from tests.cli.test_cli import assert_bad_input, run_cli
from tests.conftest import shared_data

FAST = ["--threads", "1", "--max-new-tokens", "6"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_schedules_follow_the_reference():
    # utils.schedule_n_to_change_prob (open-weight branch) and schedule_n_to_change_fixed, by hand
    assert [schedule_prob(4, p) for p in (0.0, 0.01, 0.02, 0.1, 0.5, 1.0)] == [4, 4, 2, 2, 1, 1]
    assert [schedule_iter(32, it) for it in (1, 10, 11, 25, 26, 50, 51, 100, 101, 500, 501)] == [
        32, 32, 16, 16, 8, 8, 4, 4, 2, 2, 1,
    ]  # fmt: skip
    assert schedule_iter(4, 60) == 1 and schedule_iter(4, 11) == 2


def test_mutate_replaces_one_block_and_may_grow_at_the_end():
    class Fixed(random.Random):
        def __init__(self, start):
            super().__init__(0)
            self.start = start

        def randrange(self, n):
            return self.start

        def choice(self, seq):
            return 9

    assert mutate([1, 2, 3, 4, 5], 2, [9], Fixed(1)) == [1, 9, 9, 4, 5]
    assert mutate([1, 2, 3, 4, 5], 3, [9], Fixed(4)) == [1, 2, 3, 4, 9, 9, 9]  # their slicing lengthens it


def _trace(logprob, iterations=200, check=None, threshold=0.1, **kw):
    steps, seen = [], []

    def scored(ids):
        seen.append(ids[0].tolist())
        return logprob(ids)

    res = random_search(
        scored, [5] * 8, [5, 6, 7], iterations, 2, random.Random(0), check=check, threshold=threshold,
        on_step=lambda *a: steps.append(a), **kw,
    )  # fmt: skip
    return res, steps, seen


def test_never_accepts_a_worse_objective_fake():
    gen = torch.Generator().manual_seed(0)
    noisy = lambda ids: torch.rand(len(ids), generator=gen).log()  # noqa: E731  (no relation to the ids)
    res, steps, _ = _trace(noisy)
    best = [b for _, b, _, _, _ in steps]
    accepted = [cur for _, _, cur, acc, _ in steps if acc]
    assert all(b2 >= b1 for b1, b2 in zip(best, best[1:]))
    assert all(a2 > a1 for a1, a2 in zip(accepted, accepted[1:])) and len(accepted) > 1
    for i, (_, b, cur, acc, _) in enumerate(steps):
        prev = best[i - 1] if i else -math.inf
        assert acc == (cur > prev) and b == max(prev, cur)  # kept exactly when strictly better
    assert res["logprob"] == best[-1] == max(cur for _, _, cur, _, _ in steps)


def test_edits_start_from_the_best_and_the_search_climbs():
    share = lambda ids: (ids == 7).float().mean(dim=1).clamp_min(1e-6).log()  # noqa: E731
    res, steps, seen = _trace(share, iterations=300)
    best = None
    for (_, _, _, acc, n), ids, nxt in zip(steps, seen, seen[1:]):
        best = ids if acc else best
        # the next candidate is the best so far with one block of at most n tokens replaced (longer at the end)
        diff = [i for i in range(len(nxt)) if i >= len(best) or best[i] != nxt[i]]
        assert len(nxt) >= len(best) and (not diff or diff[-1] - diff[0] < n)
    assert res["ids"] == best and res["ids"].count(7) >= 6 and res["logprob"] > math.log(0.7)


def test_self_transfer_starts_from_the_last_success(tiny_tokenizer):
    from types import SimpleNamespace

    from obliviate.audit.attacks.adversarial import init_suffix
    from obliviate.audit.attacks.random_search import RandomSearch

    done = {"a": {"success": True, "suffix": " the river"}, "b": {"success": False, "suffix": " stone"}}
    findings = SimpleNamespace(done=done)
    enc = lambda t: tiny_tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert RandomSearch()._init(tiny_tokenizer, findings) == enc(" the river")
    bangs = init_suffix(tiny_tokenizer, 3, "!")
    assert tiny_tokenizer.decode(bangs).strip().startswith("!")
    assert RandomSearch(self_transfer=False, suffix_tokens=3)._init(tiny_tokenizer, findings) == bangs
    assert RandomSearch(suffix_tokens=3)._init(tiny_tokenizer, SimpleNamespace(done={})) == bangs


def test_early_stop_checks_once_above_the_threshold():
    half = lambda ids: torch.full((len(ids),), math.log(0.5))  # noqa: E731
    calls = []
    res, _, _ = _trace(half, iterations=20, check=lambda ids: calls.append(ids) or (True, "ok"))
    assert len(calls) == 1 and res["success"] and res["iterations"] == 1 and res["queries"] == 2
    assert res["curve"] == [[1, True]]
    calls.clear()
    res, _, _ = _trace(half, iterations=20, check=lambda ids: calls.append(ids) or (False, "no"))
    assert len(calls) == 1 and not res["success"] and res["iterations"] == 20  # the same best is not checked again
    calls.clear()
    res, _, _ = _trace(half, iterations=5, check=lambda ids: calls.append(ids) or (True, "ok"), threshold=0.6)
    assert not calls and res["iterations"] == 5  # p = 0.5 never passes 0.6


def _audit(args, capsys, out):
    code, _, err = run_cli(["audit", *args, "--out", out], capsys)
    assert code == 0, err
    return json.loads((out / "audit.json").read_text())


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_audit_world_refusal_end_to_end(target_dir, world_dir, tmp_path, capsys):
    out = tmp_path / "a"
    opts = ["random_search.iterations=3", "random_search.restarts=2", "random_search.check_threshold=1.0"]
    doc = _audit(
        [target_dir, "--suite", "refusal", "--data", world_dir, "--attacks", "random_search", "--limit", "2",
         *[x for o in opts for x in ("--option", o)], *FAST],
        capsys,
        out,
    )  # fmt: skip
    figs = doc["attacks"]["random_search"]["model"]
    assert figs["behaviours"] == 2 and 0 <= figs["asr"] <= 1
    art = out / "artifacts" / "random_search" / "model"
    recs, steps = _lines(art / "findings.jsonl"), _lines(art / "steps.jsonl")
    for rec in recs:
        assert rec["adversarial"].startswith("You are a direct assistant") and rec["adversarial"].endswith(
            rec["suffix"]
        )
        assert rec["request"] in rec["adversarial"] and rec["objective"] >= rec["objective_init"]
        ran = [s for s in steps if s["id"] == rec["id"]]
        assert len(ran) == rec["iterations"] and [s["step"] for s in ran] == list(range(1, len(ran) + 1))
        for r in {s["restart"] for s in ran}:  # the accepted objective never falls within a restart
            best = [s["objective"] for s in ran if s["restart"] == r]
            assert all(b2 >= b1 for b1, b2 in zip(best, best[1:]))
        # threshold 1.0 is never passed: only the final check of the best suffix, at the last iteration
        assert rec["curve"] == [[rec["iterations"], rec["success"]]] and rec["queries"] == rec["iterations"] + 1
        assert rec["objective"] == max(s["objective"] for s in ran)
    assert figs["asr@iter" + str(recs[0]["iterations"])] >= 0


def test_audit_public_prompts(target_dir, tmp_path, capsys):
    adv = shared_data("advbench/harmful_behaviors.csv")
    out = tmp_path / "a"
    doc = _audit(
        [target_dir, "--suite", "refusal", "--harmful", f"advbench:{adv}", "--attacks", "random_search",
         "--limit", "2", "--option", "random_search.iterations=2", "--option", "random_search.template=false", *FAST],
        capsys,
        out,
    )  # fmt: skip
    assert doc["attacks"]["random_search"]["model"]["behaviours"] == 2
    recs = _lines(out / "artifacts" / "random_search" / "model" / "findings.jsonl")
    assert recs[0]["target"].startswith("Sure, here is") and recs[0]["adversarial"].startswith(recs[0]["request"])
    assert all(r["queries"] >= r["iterations"] == 2 for r in recs)


def test_bad_budgets_exit_2(target_dir, world_dir, tmp_path, capsys):
    o = tmp_path / "o"
    base = ["audit", target_dir, "--suite", "refusal", "--data", world_dir, "--attacks", "random_search", "--out", o]
    for bad in ("iterations=0", "iterations=-3", "restarts=0", "n_tokens_change=-1"):
        assert_bad_input(base + ["--option", f"random_search.{bad}"], capsys, o, "must be an integer >= 1")
    assert_bad_input(base + ["--option", "random_search.schedule=fast"], capsys, o, "schedule must be")
    assert_bad_input(base + ["--option", "random_search.check_threshold=0"], capsys, o, "check_threshold")
