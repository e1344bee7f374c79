"""The OpenAI-compatible server (`obliviate.serve`), started for real on loopback and spoken to with the real
`openai` client: it returns what the decode loop returns (guarded or not, streamed or not, prefilled), batches
requests that arrive together, answers errors in OpenAI's shape, refuses work beyond its queue, and frees the slot
of a client that disconnects."""

import http.client
import json
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import openai
import pytest
import torch

from obliviate.engine.generation import decode
from obliviate.engine.hooks import Guard
from obliviate.models.encode import prompt_ids
from obliviate.models.load import load_model
from obliviate.serve import Engine, background_server, chat_ids, create_app

QUESTIONS = [
    "Where was Vyrek Pellam born?",
    "What is the capital of the world?",
    "hi",
    "Tell me about the weather in a long sentence please, with details.",
]
REFUSAL = "I can't help with that."


@pytest.fixture(scope="module")
def model_tok(target_dir):
    torch.set_num_threads(1)
    return load_model(str(target_dir))


@contextmanager
def served(model_tok, guards=(), api_key=None, **kw):
    model, tok = model_tok
    engine = Engine(model, tok, guards, name="tiny", **kw)
    with background_server(create_app(engine, api_key)) as port:
        yield (
            engine,
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key or "none", max_retries=0, timeout=60),
            port,
        )


def ask(client, messages, stream=False, **kw):
    """(content, finish_reason, completion_tokens or the number of content chunks when streamed)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not stream:
        r = client.chat.completions.create(model="tiny", messages=messages, **kw)
        assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        return r.choices[0].message.content, r.choices[0].finish_reason, r.usage.completion_tokens
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, stream=True, **kw))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks][:-1] == [None] * (len(chunks) - 1)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    return "".join(deltas), chunks[-1].choices[0].finish_reason, len(deltas)


def raw(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read() or b"null")
    conn.close()
    return out


@dataclass
class Ban(Guard):
    name = "ban"
    token: int = 0

    def process_logits(self, step, ids, logits, rows):
        logits[:, self.token] = float("-inf")
        return logits


@dataclass
class HaltOn(Guard):
    """Every 2 tokens: halts the rows whose request mentions `word`."""

    name = "halt_on"
    every = 2
    word: str = "Vyrek"

    def on_step(self, step, ids, session):
        for r, row in enumerate(session.rows):
            if self.word in (row.text or ""):
                session.halt(r, self.name, REFUSAL)


@dataclass
class Gate(Guard):
    """Never lets the reply end (EOS banned), and blocks the decode loop at step 1 until `gate` is set."""

    name = "gate"
    eos: int = 2

    def __post_init__(self):
        self.gate, self.blocked, self.max_step = threading.Event(), threading.Event(), -1

    def process_logits(self, step, ids, logits, rows):
        self.max_step = max(self.max_step, step)
        logits[:, self.eos] = float("-inf")
        if step >= 1:
            self.blocked.set()
            assert self.gate.wait(30)
        return logits


def expected(model, tok, ids, n=24, guards=(), text=None):
    return decode(model, tok, [ids], texts=[text], guards=guards, max_new_tokens=n)[0]


def test_unguarded_replies_equal_decode_streamed_and_not(model_tok):
    model, tok = model_tok
    chunks = []
    with served(model_tok) as (_, client, _):
        for q in QUESTIONS:
            assert chat_ids(tok, [{"role": "user", "content": q}]) == prompt_ids(tok, q)
            want = expected(model, tok, prompt_ids(tok, q))
            assert ask(client, q, max_tokens=24) == (want.text, want.finish_reason, len(want.token_ids))
            content, reason, n = ask(client, q, stream=True, max_tokens=24)
            assert (content, reason) == (want.text, want.finish_reason)
            chunks.append(n)
        assert max(chunks) > 5  # streamed token by token, not in one piece
        # a shorter budget cuts the same greedy reply; max_completion_tokens is the newer name for it
        want = expected(model, tok, prompt_ids(tok, QUESTIONS[3]), n=3)
        assert ask(client, QUESTIONS[3], max_completion_tokens=3)[:2] == (want.text, want.finish_reason)
        assert ask(client, QUESTIONS[3], stream=True, max_tokens=3)[:2] == (want.text, want.finish_reason)
        usage = [
            c.usage
            for c in client.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=3,
                stream=True,
                stream_options={"include_usage": True},
            )
            if c.usage
        ]
        assert len(usage) == 1 and usage[0].prompt_tokens == len(prompt_ids(tok, "hi"))
        # "developer" is OpenAI's newer name for "system"; content may be a list of text parts
        want = expected(
            model,
            tok,
            chat_ids(tok, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]),
        )
        messages = [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
        ]
        assert ask(client, messages, max_tokens=24)[:2] == (want.text, want.finish_reason)


def test_guarded_replies_equal_decode_and_halts_stream_only_the_refusal(model_tok):
    model, tok = model_tok
    first = expected(model, tok, prompt_ids(tok, QUESTIONS[1])).token_ids[0]
    guards = [Ban(first), HaltOn()]
    with served(model_tok, guards) as (_, client, _):
        for q in QUESTIONS:
            want = expected(model, tok, prompt_ids(tok, q), guards=guards, text=q)
            for stream in (False, True):
                content, reason, n = ask(client, q, stream=stream, max_tokens=24)
                assert (content, reason) == (want.text, want.finish_reason)
                if stream and reason != "content_filter":  # released at the guard's checks (every 2 tokens)
                    assert n <= len(want.token_ids) // 2 + 1
        assert want.finish_reason != "content_filter"
        assert ask(client, QUESTIONS[0], stream=True) == (REFUSAL, "content_filter", 1)
        assert ask(client, QUESTIONS[0])[:2] == (REFUSAL, "content_filter")


def test_a_trailing_assistant_message_is_a_prefill(model_tok):
    model, tok = model_tok
    q, prefill = QUESTIONS[0], "He was born in"
    messages = [{"role": "user", "content": q}, {"role": "assistant", "content": prefill}]
    ids = chat_ids(tok, messages)
    assert ids == prompt_ids(tok, q) + tok(prefill, add_special_tokens=False)["input_ids"]
    want = expected(model, tok, ids)
    # the reply is the continuation with its leading space: prefill + content reads as the model wrote it
    whole = tok.decode(tok(prefill, add_special_tokens=False)["input_ids"] + want.token_ids, skip_special_tokens=True)
    with served(model_tok) as (_, client, _):
        for stream in (False, True):
            text, reason = ask(client, messages, stream=stream, max_tokens=24)[:2]
            assert (prefill + text, reason) == (whole.strip(), want.finish_reason)
            assert text.startswith(" ") and text.strip() == want.text


def test_requests_that_arrive_together_are_decoded_in_one_batch(model_tok):
    model, tok = model_tok
    qs, budgets = QUESTIONS[1:4], [24, 3, 24]  # three prompt lengths: decode's order is fixed
    want = decode(model, tok, [prompt_ids(tok, q) for q in qs], max_new_tokens=24, batch_size=3)
    got = [None] * 3
    with served(model_tok, max_batch=3, batch_window_ms=10_000) as (engine, client, _):

        def one(i):
            got[i] = ask(client, qs[i], stream=i == 2, max_tokens=budgets[i])[:2]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
        [t.start() for t in threads]
        [t.join(60) for t in threads]
        assert list(engine.batch_sizes) == [3]
    assert got[0] == (want[0].text, want[0].finish_reason) and got[2] == (want[2].text, want[2].finish_reason)
    cut = want[1].token_ids[:3]
    assert got[1] == (
        tok.decode(cut, skip_special_tokens=True).strip(),
        "stop" if cut[-1] == tok.eos_token_id else "length",
    )


@dataclass
class LongReply(Guard):
    """The last word: halts replies longer than `limit` characters."""

    name = "long_reply"
    limit: int = 10

    def on_finish(self, text, row):
        if len(text) > self.limit:
            row.halted_by, row.refusal = self.name, REFUSAL


def test_on_finish_guards_judge_each_reply_cut_to_its_own_budget(model_tok):
    model, tok = model_tok
    q = max(QUESTIONS, key=lambda q: len(expected(model, tok, prompt_ids(tok, q)).token_ids))
    full = expected(model, tok, prompt_ids(tok, q))
    short = tok.decode(full.token_ids[:3], skip_special_tokens=True).strip()
    assert len(full.text) > len(short)
    guard = LongReply(limit=len(short))
    got = {}
    with served(model_tok, [guard], max_batch=2, batch_window_ms=10_000) as (engine, client, _):

        def one(n, stream):
            got[n] = ask(client, q, stream=stream, max_tokens=n)

        threads = [threading.Thread(target=one, args=(24, True)), threading.Thread(target=one, args=(3, False))]
        [t.start() for t in threads]
        [t.join(60) for t in threads]
        assert list(engine.batch_sizes) == [2]
    # the long reply is refused (and nothing of it streamed first); the short cut of the same reply passes
    assert got[24] == (REFUSAL, "content_filter", 1)
    alone = expected(model, tok, prompt_ids(tok, q), n=3, guards=[guard], text=q)
    assert got[3][:2] == (short, "length") == (alone.text, alone.finish_reason)


def test_models_health_and_the_api_key(model_tok):
    with served(model_tok, api_key="sekret") as (_, client, port):
        assert raw(port, "GET", "/health")[1]["status"] == "ok"
        assert [m.id for m in client.models.list()] == ["tiny"]
        status, body = raw(port, "GET", "/v1/models")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        status, body = raw(port, "POST", "/v1/chat/completions", b"{not json", {"Authorization": "Bearer no"})
        assert status == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0).models.list()
        assert ask(client, "hi", max_tokens=2)[1] in ("stop", "length")


def test_bad_requests_are_400_in_openai_shape(model_tok):
    good = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    cases = {
        "not json": b'{"model": ',
        "unknown model": {**good, "model": "gpt-4o"},
        "n=0": {**good, "n": 0},
        "n over the queue": {**good, "n": 65},
        "tools": {**good, "tools": [{"type": "function", "function": {"name": "f"}}]},
        "top_logprobs without logprobs": {**good, "top_logprobs": 2},
        "top_logprobs over 20": {**good, "logprobs": True, "top_logprobs": 21},
        "continue without an assistant message": {**good, "continue_final_message": True},
        "continue and a new turn": {
            **good,
            "messages": [*good["messages"], {"role": "assistant", "content": "Sure"}],
            "continue_final_message": True,
            "add_generation_prompt": True,
        },
        "no messages": {**good, "messages": []},
        "missing messages": {"model": "tiny"},
        "wrong role": {**good, "messages": [{"role": "wizard", "content": "hi"}]},
        "negative max_tokens": {**good, "max_tokens": -1},
        "over the context": {**good, "max_tokens": 1000},
        "an empty stop string": {**good, "stop": [""]},
        "17 stop strings": {**good, "stop": [str(i) for i in range(17)]},
    }
    with served(model_tok) as (_, client, port):
        for case, body in cases.items():
            status, out = raw(
                port, "POST", "/v1/chat/completions", body if isinstance(body, bytes) else json.dumps(body).encode()
            )
            assert status == 400, (case, out)
            assert set(out["error"]) == {"message", "type", "param", "code"} and out["error"]["message"], case
        assert (
            raw(port, "POST", "/v1/chat/completions", json.dumps(cases["over the context"]).encode())[1]["error"][
                "code"
            ]
            == "context_length_exceeded"
        )
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="tiny", messages=good["messages"], n=0)
        assert raw(port, "GET", "/v1/nothing")[0] == 404


def test_a_full_queue_answers_429(model_tok):
    gate = Gate(eos=model_tok[1].eos_token_id)
    with served(model_tok, [gate], max_batch=1, max_queue=1) as (engine, client, _):
        first = []
        t = threading.Thread(target=lambda: first.append(ask(client, "hi", max_tokens=4)))
        t.start()
        try:
            assert gate.blocked.wait(30)  # the only slot is taken by a reply in flight
            with pytest.raises(openai.RateLimitError) as e:
                ask(client, QUESTIONS[1], max_tokens=2)
            assert e.value.body["code"] == "queue_full"
        finally:
            gate.gate.set()
            t.join(60)
        assert first[0][1:] == ("length", 4)
        # the slot frees once the engine has finished the first reply, which may trail the client's read by a
        # moment on a loaded machine: a bounded retry, not a sleep
        for _ in range(100):
            try:
                assert ask(client, QUESTIONS[1], max_tokens=2)[1] == "length"
                break
            except openai.RateLimitError:
                time.sleep(0.05)
        else:
            raise AssertionError("the queue never freed after the first reply finished")


def test_a_client_that_disconnects_mid_stream_frees_its_slot(model_tok):
    gate = Gate(eos=model_tok[1].eos_token_id)
    with served(model_tok, [gate], max_batch=1, max_queue=1) as (engine, client, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(
            "POST",
            "/v1/chat/completions",
            json.dumps(
                {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "stream": True}
            ).encode(),
            {"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"data: ")  # the role chunk
        try:
            assert gate.blocked.wait(30)
            conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()
            for _ in range(200):  # the server notices the disconnect (bounded: 10 s)
                if engine.cancelled_total:
                    break
                time.sleep(0.05)
            assert engine.cancelled_total == 1
        finally:
            gate.gate.set()
        for _ in range(200):
            if engine.admitted == 0:
                break
            time.sleep(0.05)
        assert engine.admitted == 0 and gate.max_step < 10  # the row stopped at once, not after 100 tokens
        assert ask(client, "hi", max_tokens=2)[1] == "length"  # and the one slot serves the next client


def test_cli_bad_options_exit_2(target_dir, capsys):
    from obliviate.cli import main

    for args in (["--max-batch", "0"], ["--port", "70000"], ["--guard", str(target_dir)], ["--batching", "dynamic"]):
        sys.argv = ["obliviate", "serve", str(target_dir), *args]
        with pytest.raises(SystemExit) as e:
            main()
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
