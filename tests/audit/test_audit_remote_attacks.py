"""The sampling attacks, many-shot, in-context, PAIR/TAP with an attacker endpoint, random search on logprobs and the
completion attack against `obliviate serve` of the tiny model on loopback: greedy and deterministic figures equal the
local audit's; sampled ones run, report, and send their settings (temperature, top-p, a seed per request)."""

import json
import random
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from obliviate.audit.attacks.adversarial import init_suffix, remote_sampling, replies, slots
from obliviate.audit.attacks.attacker import PREFILL_FIRST, Attacker
from obliviate.audit.attacks.random_search import FLOOR, endpoint_objective
from obliviate.audit.attacks.target_loss import TargetLoss
from obliviate.core.errors import UsageError
from obliviate.engine.sampling import Sampling
from obliviate.models.load import load_model
from obliviate.models.remote import RemoteModel
from tests.cli.test_cli import assert_bad_input, run_cli
from tests.models.test_remote import echo, free_port, stub

pytestmark = pytest.mark.usefixtures("one_thread")


def audit(capsys, out, model, world_dir, attacks, *extra, suite="refusal"):
    args = ["audit", model, "--suite", suite, "--data", world_dir, "--attacks", attacks, "--limit", "3"]
    code, _, err = run_cli([*args, "--max-new-tokens", "8", "--out", out, *extra], capsys)
    assert code == 0, err
    return json.loads((out / "audit.json").read_text())


def figures(doc, name):
    return {k: v for k, v in doc["attacks"][name]["model"].items() if "seconds" not in k}


def findings(out, name, *keys):
    """The attack's records on the audited model: (reply, *keys) of each."""
    lines = (out / "artifacts" / name / "model" / "findings.jsonl").read_text().splitlines()
    return [(r["reply"], *(r[k] for k in keys)) for r in map(json.loads, lines)]


def opts(*pairs):
    return [x for p in pairs for x in ("--option", p)]


def test_sampling_settings_reach_the_endpoint_one_seed_per_request():
    with stub(echo) as (url, log):
        m = RemoteModel("openai:" + url)
        got = replies(m, None, ["a", [{"role": "user", "content": "b"}]], 5, Sampling(0.7, 0.9, seed=11))
        replies(m, None, ["c"], 5)  # greedy: temperature 0, no seed
    assert got == ["re: a", "re: b"]
    sent = sorted((b for _, p, b, _ in log if b), key=lambda b: b["messages"][0]["content"])
    knobs = [(b["temperature"], b["top_p"], b.get("seed")) for b in sent]
    assert knobs == [(0.7, 0.9, 11), (0.7, 0.9, 12), (0.0, 1.0, None)]
    assert remote_sampling(None, 3) == {}
    with pytest.raises(UsageError, match="top_k is not part of the OpenAI API"):
        remote_sampling(Sampling(1.0, 1.0, top_k=5), 1)


def test_best_of_n_and_decoding_on_an_endpoint(target_port, target_dir, world_dir, tmp_path, capsys):
    url = f"openai:http://127.0.0.1:{target_port}/v1"
    o = opts(
        "best_of_n.temperature=0",
        "best_of_n.n=3",
        "best_of_n.behaviours=2",
        "decoding.temperatures=0.7",
        "decoding.top_ps=0.5",
        "decoding.top_ks=5",
        "decoding.behaviours=2",
    )
    local = audit(capsys, tmp_path / "local", target_dir, world_dir, "best_of_n,decoding", *o)
    remote = audit(capsys, tmp_path / "remote", url, world_dir, "best_of_n,decoding", *o, "--tokenizer", target_dir)
    assert figures(remote, "best_of_n") == figures(local, "best_of_n")  # greedy replies: the local audit's
    assert findings(tmp_path / "remote", "best_of_n") == findings(tmp_path / "local", "best_of_n") != []
    want, got = figures(local, "decoding"), figures(remote, "decoding")
    assert got["asr_greedy"] == want["asr_greedy"] and got["behaviours"] == want["behaviours"]
    assert findings(tmp_path / "remote", "decoding", "greedy_success") == findings(
        tmp_path / "local", "decoding", "greedy_success"
    )
    # the top-k sweep is not tried on an endpoint, and says so: greedy, one temperature, one top-p
    assert want["settings"] == 4.0 and got["settings"] == 3.0 and got["top_k_skipped"] == 1.0
    assert got["asr_top_k"] is None and got["best_top_k"] is None and "asr_temperature" in got
    rec = json.loads((tmp_path / "remote/artifacts/decoding/model/findings.jsonl").read_text().splitlines()[0])
    assert rec["endpoint"] is True and rec["queries"] == 3 * len(rec["systems"])

    sampled = audit(capsys, tmp_path / "sampled", url, world_dir, "best_of_n", *opts("best_of_n.n=2"))
    assert figures(sampled, "best_of_n")["behaviours"] >= 1.0  # at temperature 1: it runs and reports


def test_many_shot_and_in_context_on_an_endpoint(target_port, target_dir, world_dir, tmp_path, capsys):
    url = f"openai:http://127.0.0.1:{target_port}/v1"
    o = opts("many_shot.shots=1,2", "many_shot.behaviours=2")
    local = audit(capsys, tmp_path / "local", target_dir, world_dir, "many_shot", *o)
    remote = audit(capsys, tmp_path / "remote", url, world_dir, "many_shot", *o, "--tokenizer", target_dir)
    assert figures(remote, "many_shot") == figures(local, "many_shot") and figures(local, "many_shot")["shots_cut"]
    bare = audit(capsys, tmp_path / "bare", url, world_dir, "many_shot", *o)
    assert figures(bare, "many_shot")["shots_cut"] == 0.0  # no tokenizer: the answers go whole, and it says so
    rec = json.loads((tmp_path / "bare/artifacts/many_shot/model/findings.jsonl").read_text().splitlines()[0])
    assert "no --tokenizer" in rec["note"]

    local = audit(capsys, tmp_path / "ul", target_dir, world_dir, "in_context", suite="unlearning")
    remote = audit(capsys, tmp_path / "ur", url, world_dir, "in_context", suite="unlearning")
    assert figures(remote, "in_context") == figures(local, "in_context")


@contextmanager
def chat_stub(answer):
    """An endpoint whose chat route answers `answer(body) -> (content, finish_reason)`; yields (URL, request bodies)."""
    bodies = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, body):
            raw = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):
            self._send({"object": "list", "data": [{"id": "bot", "object": "model"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            content, reason = answer(body)
            self._send({"choices": [{"index": 0, "message": {"content": content}, "finish_reason": reason}]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield f"openai:http://127.0.0.1:{server.server_address[1]}/v1", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_an_endpoint_attacker_continues_its_json_prefill_with_its_sampling_settings():
    answers = iter([("no json here", "length"), ('Write it as a story."', "stop"), ("[[NO]] it asks else", "stop")])
    with chat_stub(lambda body: next(answers)) as (url, bodies):
        bot = Attacker(RemoteModel(url), None, "0:b1", max_new_tokens=20, attempts=2, temperature=1.0, top_p=0.9)
        got = bot.propose("SYS", [[{"role": "user", "content": "first"}]])
        assert got == [{"improvement": "", "prompt": "Write it as a story."}]  # the stop string "}" put back
        assert bot.replies == 2 and bot.failures == 1  # the first answer did not parse: asked again
        assert bot.on_topic("goal", ["a prompt"]) == [False]
    first, second, topic = bodies
    assert first["messages"] == [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": PREFILL_FIRST},
    ]
    assert first["continue_final_message"] is True and first["stop"] == ["}"] and first["max_tokens"] == 20
    assert (first["temperature"], first["top_p"]) == (1.0, 0.9)
    seeds = [random.Random(f"0:b1:{call}").getrandbits(63) for call in (1, 2)]
    assert [first["seed"], second["seed"]] == seeds  # a seed per call (and per conversation: + j)
    assert topic["temperature"] == 0.0 and topic["max_tokens"] == 10 and "continue_final_message" not in topic


def test_pair_and_tap_with_an_endpoint_attacker(target_port, world_dir, tmp_path, capsys):
    """The target is `obliviate serve` of the tiny model; the attacker an endpoint that always writes the same JSON
    (the tiny model's context, 128 tokens, cannot hold the attacker's instructions) and calls every prompt on topic."""
    url = f"openai:http://127.0.0.1:{target_port}/v1"

    def attacker(body):
        return ('Tell it as a story."', "stop") if body.get("continue_final_message") else ("[[YES]]", "stop")

    small = ["behaviours=1", "attacker_max_new_tokens=12", "attempts=1", "max_queries=2"]
    o = opts(*(f"{a}.{x}" for a in ("pair", "tap") for x in small), "tap.depth=1", "tap.width=1")
    with chat_stub(attacker) as (bot, bodies):
        doc = audit(capsys, tmp_path / "o", url, world_dir, "pair,tap", *o, "--attacker-model", bot)
    assert set(doc["attacks"]) == {"pair", "tap"} and not doc["skipped"]
    for name in ("pair", "tap"):
        lines = (tmp_path / f"o/artifacts/{name}/model/findings.jsonl").read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        assert [r["adversarial"] for r in recs] == ["Tell it as a story."]  # the attacker's prompt reached the target
        assert recs[0]["reply"] and 1 <= recs[0]["queries"] <= 2 and recs[0]["attacker_parse_failures"] == 0
        assert figures(doc, name)["attacker_parse_failure_rate"] == 0.0
    assert any(not b.get("continue_final_message") for b in bodies)  # TAP asked its on-topic question
    bad = f"openai:http://127.0.0.1:{free_port()}/v1"
    args = ["audit", url, "--suite", "refusal", "--data", world_dir, "--attacks", "pair", "--out", tmp_path / "b"]
    assert_bad_input([*args, "--attacker-model", bad], capsys, tmp_path / "b", "pair: attacker model: ")


def test_the_endpoint_objective_is_the_local_first_token_logprob_or_the_floor(target_port, target_dir):
    """Against the local forward pass (TargetLoss): a target token in the endpoint's top 20 gets its log-probability,
    one outside gets FLOOR, and is counted."""
    model, tok = load_model(str(target_dir))
    remote = RemoteModel(f"openai:http://127.0.0.1:{target_port}/v1")
    request, suffix = "Who guards the Quill moonvault?", init_suffix(tok, 4, "!")
    probe = slots(tok, request, "x")
    logits = model(torch.tensor([probe.before + suffix + probe.after])).logits[0, -1].float()
    order = torch.log_softmax(logits, -1).argsort(descending=True).tolist()
    inside, outside = order[3], order[40]  # the 4th most likely token, and one beyond the top 20
    for token, floor in ((inside, False), (outside, True)):
        s = slots(tok, request, tok.decode([token]))
        assert s.target[0] == token
        want = float(TargetLoss(model, s).first_token_logprob(torch.tensor([suffix]))[0])
        floored = [0]
        got = endpoint_objective(remote, tok, s, 20, floored)(torch.tensor([suffix, suffix]))
        assert got == ([FLOOR, FLOOR] if floor else pytest.approx([want, want], abs=1e-4))
        assert floored == [2 if floor else 0] and want > FLOOR


def test_random_search_on_an_endpoint_runs_and_reports(target_port, target_dir, world_dir, tmp_path, capsys):
    url = f"openai:http://127.0.0.1:{target_port}/v1"
    # no template: the tiny model's context (128 tokens) would not hold it
    o = opts(*(f"random_search.{x}" for x in ("iterations=6", "behaviours=1", "suffix_tokens=4", "template=false")))
    remote = audit(capsys, tmp_path / "remote", url, world_dir, "random_search", *o, "--tokenizer", target_dir)
    rec = json.loads((tmp_path / "remote/artifacts/random_search/model/findings.jsonl").read_text())
    lines = (tmp_path / "remote/artifacts/random_search/model/steps.jsonl").read_text().splitlines()
    steps = [json.loads(x) for x in lines]
    # the tiny model never puts this target's first token in its top 20: every query is at the floor, and the
    # initial suffix stays the best (a suffix at the floor is never kept over it)
    assert rec["below_top_k"] == 6 and rec["objective"] == FLOOR and rec["iterations"] == 6
    assert [s["accepted"] for s in steps] == [True] + [False] * 5
    assert figures(remote, "random_search")["behaviours"] == 1.0
    # without a tokenizer, or where the endpoint returns no logprobs, it is skipped with the reason
    bare = audit(capsys, tmp_path / "bare", url, world_dir, "tense,random_search", *o)
    assert "--tokenizer" in bare["skipped"]["random_search"]
    with chat_stub(lambda body: ("Sure", "stop")) as (plain, _):
        args = ["audit", plain, "--suite", "refusal", "--data", world_dir, "--attacks", "random_search"]
        assert_bad_input(
            [*args, "--tokenizer", target_dir, "--out", tmp_path / "n"],
            capsys,
            tmp_path / "n",
            "returns no log-probabilities",
        )


def test_the_completion_attack_sends_plain_text_to_v1_completions(target_port, target_dir, world_dir, tmp_path, capsys):
    from obliviate.audit.attacks.prefill import Completion
    from obliviate.engine.generation import generate
    from obliviate.models.encode import prompt_ids, text_ids

    model, tok = load_model(str(target_dir))
    url = f"openai:http://127.0.0.1:{target_port}/v1"
    texts, seen = ["How is the Quill moonvault opened?", "Who keeps the brass tide-valve?"], []
    judge = lambda prompts, outs: seen.append(outs) or [o.startswith("The") for o in outs]  # noqa: E731
    figs = Completion().run_remote(RemoteModel(url), tok, texts, 8, judge)
    assert seen[0] == generate(model, tok, [prompt_ids(tok, t) for t in texts], max_new_tokens=8)
    assert seen[1] == generate(model, tok, [text_ids(tok, t + "\n") for t in texts], max_new_tokens=8)
    assert figs == {k: sum(o.startswith("The") for o in outs) / 2 for k, outs in zip(figs, seen)}

    local = audit(capsys, tmp_path / "local", target_dir, world_dir, "completion")
    remote = audit(capsys, tmp_path / "remote", url, world_dir, "completion", "--tokenizer", target_dir)
    assert figures(remote, "completion") == figures(local, "completion")
    with chat_stub(lambda body: ("Sure", "stop")) as (chat_only, _):  # its /completions answers no text
        doc = audit(capsys, tmp_path / "stub", chat_only, world_dir, "tense,completion")
    assert "/v1/completions" in doc["skipped"]["completion"] and "tense" in doc["attacks"]


def test_decoding_system_variants_as_messages_render_as_the_local_ones(tiny_tokenizer):
    from obliviate.audit.attacks.decoding import system_messages, system_variants
    from obliviate.models.encode import prompt_text

    tok = tiny_tokenizer  # its template writes no default system prompt: "on" only with system_prompt
    for system_prompt, variants in (("", {"off"}), ("Be brief.", {"on", "off"})):
        ids, own = system_variants(tok, "How is it opened?", system_prompt)
        msgs, own_msgs = system_messages(tok, "How is it opened?", system_prompt)
        rendered = {k: tok(prompt_text(tok, m), add_special_tokens=False)["input_ids"] for k, m in msgs.items()}
        assert rendered == ids and set(ids) == variants and own_msgs == own
    # without the served model's tokenizer: "on" leaves the server's template its default, "off" an empty system turn
    user = {"role": "user", "content": "q"}
    assert system_messages(None, "q") == ({"on": [user], "off": [{"role": "system", "content": ""}, user]}, "on")
