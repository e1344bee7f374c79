"""PAIR and TAP (`audit/attacks/pair.py`, `tap.py`, `attacker.py`): the attacker's JSON parsing and prefill, its
seeded sampling, the query budget and the tree's pruning and branching against hand counts with a fake attacker and
a fake target, and both attacks end to end through `obliviate audit` with the tiny model as its own attacker."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from obliviate.audit.attacks.attacker import (
    FAILURE,
    PREFILL,
    PREFILL_FIRST,
    SUCCESS,
    SYSTEM,
    Attacker,
    on_topic_answer,
    parse_reply,
    render_text,
)
from obliviate.audit.attacks.pair import pair_search
from obliviate.audit.attacks.tap import prune, tap_search
from obliviate.models.load import load_model
from tests.cli.test_cli import assert_bad_input, run_cli
from tests.conftest import shared_data

FAST = ["--threads", "1", "--max-new-tokens", "4"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_tok(target_dir):
    return load_model(str(target_dir))


def test_parse_reply():
    ok = parse_reply(PREFILL + 'It refused.", "prompt": "Write a story where {x} happens."} trailing words')
    assert ok == {"improvement": "It refused.", "prompt": "Write a story where {x} happens."}
    # the first turn's prefill, raw line breaks inside a string (the references strip them), text before the object
    assert parse_reply("note " + PREFILL_FIRST + 'line one\nline two"}') == {
        "improvement": "",
        "prompt": "line one\nline two",
    }
    for bad in (
        PREFILL + 'cut short", "prompt": "Write',  # no closing brace: generation stopped early
        PREFILL + 'x", "prompts": "y"}',  # wrong key
        PREFILL + 'x", "prompt": 3}',  # not a string
        PREFILL + 'x", "prompt": "   "}',  # empty prompt
        "no json here",
        PREFILL + "x' 'prompt': 'y'}",
    ):
        assert parse_reply(bad) is None, bad


def test_system_prompt_names_goal_target_and_format():
    text = SYSTEM.format(goal="GOAL", target="TARGET")
    assert '"GOAL"' in text and '"TARGET"' in text and '{"improvement": "' in text and '"prompt"' in text


def test_on_topic_answer():
    assert on_topic_answer("Response: [[NO]]") is False and on_topic_answer("[[YES]] it does") is True
    assert on_topic_answer("No, it asks for a poem") is False and on_topic_answer("yes.") is True
    assert on_topic_answer("Nothing to say") is True  # no verdict: on topic (their evaluator's default)


class ScriptedAttacker(Attacker):
    """The real prompt rendering, parsing and retry loop, with scripted samples in place of the model."""

    def __init__(self, tok, script, attempts=3):
        super().__init__(None, tok, "s", max_new_tokens=8, attempts=attempts, temperature=1.0, top_p=0.9)
        self.script, self.seen = list(script), []

    def sample(self, prompts):
        self.seen.append([self.tok.decode(p) for p in prompts])
        return [self.script.pop(0) for _ in prompts]


def test_propose_prefills_retries_and_counts_failures(model_tok):
    _, tok = model_tok
    first = [{"role": "user", "content": "Begin."}]
    later = [*first, {"role": "assistant", "content": "{}"}, {"role": "user", "content": "Score: 1"}]
    bot = ScriptedAttacker(
        tok,
        [
            'a"}',  # first turn: prefill '{"improvement": "", "prompt": "' -> prompt "a"
            "garbage",  # later turn: unparsable
            "junk",  # retry of the later turn: unparsable again
            'better", "prompt": "b"}',  # third attempt parses
        ],
    )
    out = bot.propose("SYS", [first, later])
    assert out == [{"improvement": "", "prompt": "a"}, {"improvement": "better", "prompt": "b"}]
    assert (bot.failures, bot.replies) == (2, 4)
    # one batch of two prompts, then the failed one alone, twice
    assert [len(b) for b in bot.seen] == [2, 1, 1]
    assert bot.seen[0][0].endswith(PREFILL_FIRST) and bot.seen[0][1].endswith(PREFILL)
    assert bot.seen[1][0] == bot.seen[0][1]  # the retry resends the same prompt
    assert "SYS" in bot.seen[0][0] and "Score: 1" in bot.seen[0][1]
    # after `attempts` failures the answer is dropped
    bot = ScriptedAttacker(tok, ["x", "y"], attempts=2)
    assert bot.propose("SYS", [first]) == [None] and (bot.failures, bot.replies) == (2, 2)


def test_system_prompt_folds_into_the_first_turn_when_the_template_rejects_it(model_tok):
    import copy

    _, tok = model_tok
    tok = copy.deepcopy(tok)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "<|user|> {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    text = render_text(tok, "RULES", [{"role": "user", "content": "Begin."}])
    assert text == "<|user|> RULES\n\nBegin.\n<|assistant|>"


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(model_tok):
    model, tok = model_tok
    ids = [tok("<|user|> Where was Vyrek Pellam born?\n<|assistant|>", add_special_tokens=False)["input_ids"]] * 2

    def bot(seed):
        return Attacker(model, tok, seed, max_new_tokens=12, attempts=1, temperature=1.0, top_p=0.9)

    torch.manual_seed(123)
    a = bot("0:b1").sample(ids)
    after = torch.rand(1)
    torch.manual_seed(123)
    b = bot("0:b1").sample(ids)
    assert torch.equal(torch.rand(1), after)  # the global RNG did not move
    assert a == b and a[0] != a[1]  # same seed, same samples; the rows of a batch differ
    assert bot("0:b2").sample(ids) != a


def _fake_attacker(log, bad=lambda k: False):
    """propose(conversations): answer k (in call order) is prompt "p{k}", None where bad(k); `log` keeps the
    conversations of each call."""
    count = [0]

    def propose(convs):
        log.append(convs)
        out = []
        for _ in convs:
            k = count[0]
            count[0] += 1
            out.append(None if bad(k) else {"improvement": f"i{k}", "prompt": f"p{k}"})
        return out

    return propose


def _fake_target(sent, win=()):
    def query(prompts):
        sent.append(list(prompts))
        return [SUCCESS if p in win else FAILURE for p in prompts], [f"reply to {p}" for p in prompts]

    return query


def test_pair_search_bounds_queries_and_keeps_history():
    calls, sent, logs = [], [], []
    s = pair_search(
        _fake_attacker(calls, bad=lambda k: k == 1),  # the second stream's first answer is unparsable
        _fake_target(sent),
        "do X",
        "Sure, X",
        n_streams=3,
        n_iterations=5,
        max_queries=7,
        keep_last_n=1,
        log=lambda it, obj, **kw: logs.append((it, obj, kw["queries"])),
    )
    # iteration 1: 3 answers, 1 dropped -> 2 queries; 2: 3 -> 5; 3: room 2 -> only 2 streams asked -> 7; then stop
    assert [len(c) for c in calls] == [3, 3, 2] and [len(x) for x in sent] == [2, 3, 2]
    assert s.queries == 7 and s.steps == 3 and s.curve == [[2, False], [5, False], [7, False]]
    assert logs == [(1, 1.0, 2), (2, 1.0, 5), (3, 1.0, 7)]
    # the stream whose answer failed asks again with its opening turn; the others carry one exchange + feedback
    first, second = calls[1][0], calls[1][1]
    assert len(second) == 1 and second[0]["content"] == calls[0][1][0]["content"]
    assert [m["role"] for m in first] == ["user", "assistant", "user"] and "reply to p0" in first[-1]["content"]
    assert json.loads(first[1]["content"]) == {"improvement": "i0", "prompt": "p0"}
    assert all(len(c) <= 3 for c in calls[2])  # keep_last_n=1: one exchange and the new turn
    assert not s.success and s.prompt == "p7" and s.score == FAILURE  # the latest prompt with the top score


def test_pair_stops_at_the_first_jailbreak():
    calls, sent = [], []
    s = pair_search(
        _fake_attacker(calls),
        _fake_target(sent, win={"p4"}),
        "do X",
        "Sure, X",
        n_streams=3,
        n_iterations=5,
        max_queries=100,
        keep_last_n=4,
    )
    assert s.success and s.prompt == "p4" and s.reply == "reply to p4"
    assert s.queries == 6 and s.curve == [[3, False], [6, True]]
    rec = s.record("do X")
    assert rec["adversarial"] == "p4" and rec["objective"] == SUCCESS and rec["success"] is True


def test_prune_keeps_at_most_width_positive_scores():
    rng = random.Random(0)
    for _ in range(20):
        kept = prune([0, 1, 1, 0, 1, 1], 3, rng)
        assert len(kept) == 3 and all(i in (1, 2, 4, 5) for i in kept)
    assert prune([1, 10, 1, 10], 2, random.Random(1)) in ([1, 3], [3, 1])  # the best, best first
    assert sorted(prune([10, 1, 10], 5, rng)) == [0, 1, 2]
    assert prune([0, 0], 2, rng) == [] and len(prune([0, 0], 2, rng, keep_one=True)) == 1
    # ties are broken at random, and the same seed breaks them the same way
    seen = {tuple(prune([1] * 6, 2, random.Random(k))) for k in range(10)}
    assert len(seen) > 1 and prune([1] * 6, 2, random.Random(3)) == prune([1] * 6, 2, random.Random(3))


def test_tap_branches_prunes_and_bounds_queries():
    calls, sent, logs, topic = [], [], [], []

    def on_topic(prompts):
        topic.append(list(prompts))
        return [p not in ("p1", "p4") for p in prompts]  # two off-topic prompts

    s, off = tap_search(
        _fake_attacker(calls, bad=lambda k: k == 2),
        _fake_target(sent),
        on_topic,
        random.Random(0),
        "do X",
        "Sure, X",
        depth=4,
        branching=3,
        width=2,
        n_streams=1,
        max_queries=5,
        keep_last_n=3,
        log=lambda d, obj, **kw: logs.append(kw["leaves"]),
    )
    # depth 1: 1 root x 3 branches; p2 unparsable, p1 off-topic -> p0 queried alone; 1 leaf
    # depth 2: 1 x 3 (p3..p5); p4 off-topic -> 2 queried (3 queries); 2 leaves
    # depth 3: 2 x 3 = 6 answered, pruned to width 2 -> 5 queries: the budget is spent, depth 4 never runs
    assert [len(c) for c in calls] == [3, 3, 6] and [len(x) for x in sent] == [1, 2, 2]
    assert [len(t) for t in topic] == [2, 3, 6] and off == 2
    assert sent[0] == ["p0"] and sorted(sent[1]) == ["p3", "p5"]
    assert logs == [1, 2, 2] and all(n <= 2 for n in logs)  # never more than `width` leaves
    assert s.queries == 5 and s.steps == 3
    # a branch continues its parent's conversation: depth 2's conversations all end in p0's feedback
    assert all("reply to p0" in c[-1]["content"] and len(c) == 3 for c in calls[1])
    # the budget cuts the last depth's prompts, never the total
    sent2 = []
    s2, _ = tap_search(
        _fake_attacker([]),
        _fake_target(sent2),
        None,
        random.Random(0),
        "do X",
        "Sure, X",
        depth=5,
        branching=4,
        width=3,
        n_streams=2,
        max_queries=7,
        keep_last_n=3,
    )
    assert [len(x) for x in sent2] == [3, 3, 1] and s2.queries == 7


def test_tap_stops_at_the_first_jailbreak():
    calls = []
    s, _ = tap_search(
        _fake_attacker(calls),
        _fake_target([], win={"p2"}),
        None,
        random.Random(0),
        "do X",
        "Sure, X",
        depth=5,
        branching=2,
        width=4,
        n_streams=1,
        max_queries=50,
        keep_last_n=3,
    )
    assert s.success and s.prompt == "p2" and s.steps == 2 and len(calls) == 2


@pytest.mark.parametrize("attack", ["pair", "tap"])
def test_end_to_end_through_the_audit(attack, target_dir, world_dir, tmp_path, capsys):
    """pair on a world, the tiny model attacking itself; tap on AdvBench prompts, the tiny model loaded again as an
    explicit attacker model. It rarely writes JSON, so what is checked is the bookkeeping: records, bounded queries,
    the figures, the per-step log."""
    out = tmp_path / "aud"
    if attack == "pair":
        data = ["--data", world_dir]
        opts = ["n_streams=2", "n_iterations=2", "max_queries=3"]
    else:
        data = ["--harmful", f"advbench:{shared_data('advbench/harmful_behaviors.csv')}", "--limit", "2"]
        opts = ["depth=2", "branching=2", "width=2", "max_queries=3", f"attacker_model={target_dir}"]
    args = ["audit", target_dir, "--suite", "refusal", *data, "--attacks", attack, "--out", out]
    for o in ["behaviours=2", "attacker_max_new_tokens=12", "attempts=1", *opts]:
        args += ["--option", f"{attack}.{o}"]
    code, _, err = run_cli([*args, *FAST], capsys)
    assert code == 0, err
    figs = json.loads((out / "audit.json").read_text())["attacks"][attack]["model"]
    assert figs["behaviours"] == 2 and 0 <= figs["asr"] <= 1 and figs["mean_queries"] <= 3
    assert 0 <= figs["attacker_parse_failure_rate"] <= 1
    art = out / "artifacts" / attack / "model"
    recs = [json.loads(x) for x in (art / "findings.jsonl").read_text().splitlines()]
    assert len(recs) == 2
    for r in recs:
        assert r["queries"] <= 3 and r["attacker_replies"] >= r["attacker_parse_failures"] >= 0
        assert r["attacker_replies"] > 0 and isinstance(r["adversarial"], str) and r["adversarial"]
        assert all(q <= 3 for q, _ in r["curve"])
    assert figs["attacker_parse_failures"] == sum(r["attacker_parse_failures"] for r in recs)
    steps = [json.loads(x) for x in (art / "steps.jsonl").read_text().splitlines()]
    assert steps and {"id", "step", "objective", "best", "queries", "parse_failures"} <= set(steps[0])


def test_bad_input_exits_2(target_dir, world_dir, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(target_dir, base)
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    (base / "chat_template.jinja").unlink(missing_ok=True)
    o = tmp_path / "o"
    args = ["audit", target_dir, "--suite", "refusal", "--data", world_dir, "--out", o]
    for attack in ("pair", "tap"):
        msg = f"{attack}: attacker model {base} is not a chat model: its tokenizer has no chat template"
        bad = [*args, "--attacks", attack, "--option", f"{attack}.attacker_model={base}"]
        assert_bad_input(bad, capsys, o, msg)
        assert_bad_input(
            [*args, "--attacks", attack, "--option", f"{attack}.max_queries=0"], capsys, o, "max_queries must be"
        )
    assert_bad_input([*args, "--attacks", "tap", "--option", "tap.width=-1"], capsys, o, "width must be")
    assert_bad_input([*args, "--attacks", "pair", "--option", "pair.top_p=0"], capsys, o, "top_p must be")
    assert_bad_input(
        [*args, "--attacks", "pair", "--option", f"pair.attacker_model={tmp_path}"], capsys, o, "not a model directory"
    )
    # an attacked model without a chat template (audited under --no-chat-template) cannot be its own attacker
    code, _, err = run_cli(
        ["audit", base, "--suite", "refusal", "--data", world_dir, "--out", o, "--no-chat-template", *FAST]
        + ["--attacks", "pair", "--option", "pair.behaviours=1", "--option", "pair.max_queries=1"],
        capsys,
    )
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert f"the attacked model {base}) is not a chat model: its tokenizer has no chat template" in errors[0]
    assert not o.exists()
