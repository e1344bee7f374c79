"""The server's defences, each attacked for real on loopback: a body over the limit (413 before it is read, while
/health keeps answering), tokenisation off the event loop, a raising guard that fails only its own request, a dead
worker (503, fast), the Host allowlist (DNS rebinding), slow heads and bodies (closed after the read timeout), the
connection limit, strict field types and the Bearer scheme in any case. The command line's side is in
test_serve_cli.py."""

import http.client
import json
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import torch

import obliviate.serve.schema as schema

# the raw-socket senders and the raising guards are the ones the benchmark measures with
from bench.serve_checks import Explode, Fatal, send_big, send_big_answer
from obliviate.engine.generation import decode
from obliviate.models.encode import prompt_ids
from obliviate.models.load import load_model
from obliviate.serve import Engine, Limits, background_server, create_app

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def model_tok(target_dir):
    torch.set_num_threads(1)
    return load_model(str(target_dir))


@contextmanager
def served(model_tok, guards=(), api_key=None, limits=None, **kw):
    model, tok = model_tok
    engine = Engine(model, tok, guards, name="tiny", **kw)
    with background_server(create_app(engine, api_key, limits)) as port:
        yield engine, port


def call(port, method, path, body=None, headers=None, timeout=60):
    """(status, the body parsed as JSON or else its text, seconds). `body` may be a dict (sent as JSON) or bytes."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(data or b"null"), time.perf_counter() - t0
    except ValueError:
        return resp.status, data.decode(), time.perf_counter() - t0


def chat(text, **fields):
    return {"model": "tiny", "messages": [{"role": "user", "content": text}], **fields}


def is_openai_error(body):
    return set(body) >= {"error"} and set(body["error"]) == {"message", "type", "param", "code"}


class HealthPoller:
    """Polls /health from a thread while a block runs; `latencies` holds each answer's seconds."""

    def __init__(self, port):
        self.port, self.latencies, self.statuses, self._stop = port, [], [], threading.Event()

    def __enter__(self):
        def poll():
            while not self._stop.is_set():
                status, _, dt = call(self.port, "GET", "/health", timeout=30)
                self.statuses.append(status)
                self.latencies.append(dt)
                time.sleep(0.005)

        self._thread = threading.Thread(target=poll)
        self._thread.start()
        for _ in range(3000):  # bounded: 15 s for the first answer
            if self.latencies or not self._thread.is_alive():
                break
            time.sleep(0.005)
        assert self.latencies, "/health never answered"
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)


def test_a_body_over_the_limit_gets_413_before_it_is_read_and_health_keeps_answering(model_tok):
    with served(model_tok) as (_, port):  # the default limit: 2 MB
        with HealthPoller(port) as health:
            for chunked in (False, True):  # announced by Content-Length, or counted as it streams
                tries = [send_big(port, 8_000_000, chunked) for _ in range(5)]
                assert [status for status, _ in tries] == [413] * 5
                # 50 ms is the target (bench/serve_load.py --hardening measures it); a loaded CI machine gets slack
                assert min(dt for _, dt in tries) < 0.05 and max(dt for _, dt in tries) < 1.0, tries
        assert set(health.statuses) == {200} and sorted(health.latencies)[len(health.latencies) // 2] < 0.05
        assert max(health.latencies) < 1.0, max(health.latencies)
        status, body = send_big_answer(port, 2_000_001)
        assert status == 413 and is_openai_error(body) and body["error"]["code"] == "request_too_large"
    with served(model_tok, limits=Limits(max_body=300)) as (_, port):
        small = json.dumps(chat("hi", max_tokens=2)).encode()
        assert len(small) < 300 and call(port, "POST", CHAT, small)[0] == 200
        assert call(port, "POST", CHAT, small + b" " * (301 - len(small)))[0] == 413
        assert send_big(port, 301, chunked=False)[0] == 413


def test_tokenisation_runs_off_the_event_loop(model_tok, monkeypatch):
    real = schema.chat_ids

    def slow(tok, messages, context=None):  # a tokenizer that takes a second, as a large prompt can
        if "SLOW" in messages[-1]["content"]:
            time.sleep(1.0)
        return real(tok, messages, context)

    monkeypatch.setattr(schema, "chat_ids", slow)
    with served(model_tok) as (_, port):
        got = []
        with HealthPoller(port) as health:
            t = threading.Thread(target=lambda: got.append(call(port, "POST", CHAT, chat("SLOW hi", max_tokens=2))))
            t.start()
            t.join(60)
        assert got[0][0] == 200 and got[0][2] >= 1.0
        assert max(health.latencies) < 0.5 and len(health.latencies) > 5, health.latencies


def test_a_raising_guard_fails_only_its_own_request(model_tok, caplog):
    model, tok = model_tok
    guard, innocent = Explode(), "Where was Vyrek Pellam born?"
    want = decode(model, tok, [prompt_ids(tok, innocent)], texts=[innocent], guards=[guard], max_new_tokens=8)[0]
    for stream in (False, True):
        caplog.clear()
        with served(model_tok, [guard], max_batch=2, batch_window_ms=10_000) as (engine, port):
            got = {}

            def one(text, streamed):
                body = chat(text, max_tokens=8, stream=streamed)
                if not streamed:
                    got[text] = call(port, "POST", CHAT, body)[:2]
                    return
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("POST", CHAT, json.dumps(body).encode(), {"Content-Type": "application/json"})
                events = [
                    json.loads(line[6:])
                    for line in conn.getresponse().read().decode().splitlines()
                    if line.startswith("data: {")
                ]
                got[text] = (
                    "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices")),
                    events[-1]["choices"][0]["finish_reason"],
                )

            threads = [
                threading.Thread(target=one, args=(innocent, stream)),
                threading.Thread(target=one, args=("please explode now", False)),
            ]
            [t.start() for t in threads]
            [t.join(60) for t in threads]
            assert list(engine.batch_sizes)[0] == 2  # they were decoded together, then one by one
        if stream:
            assert got[innocent] == (want.text, want.finish_reason)
        else:
            status, body = got[innocent]
            assert status == 200 and body["choices"][0]["message"]["content"] == want.text
        status, body = got["please explode now"]
        assert status == 500 and is_openai_error(body) and body["error"]["code"] == "internal_error"
        assert "shapes" not in json.dumps(body) and "RuntimeError" not in json.dumps(body)
        assert "tensor shapes (3, 4)" in caplog.text  # the cause is in the server log
        assert "explode now" not in caplog.text and innocent not in caplog.text  # prompts never are


def test_health_is_503_and_requests_fail_fast_once_the_worker_dies(model_tok):
    with served(model_tok, [Fatal()]) as (engine, port):
        assert call(port, "GET", "/health")[0] == 200
        status, body, dt = call(port, "POST", CHAT, chat("die now", max_tokens=4), timeout=30)
        assert status == 503 and body["error"]["code"] == "worker_dead" and dt < 10
        for _ in range(100):  # the thread's last breath
            if not engine._thread.is_alive():
                break
            time.sleep(0.02)
        status, body, _ = call(port, "GET", "/health")
        assert status == 503 and body["status"] == "unavailable" and body["error"]["code"] == "worker_dead"
        status, body, dt = call(port, "POST", CHAT, chat("hi", max_tokens=2))
        assert status == 503 and body["error"]["code"] == "worker_dead" and dt < 1.0
        assert engine.admitted == 0


def test_only_allowed_host_names_are_answered(model_tok):
    with served(model_tok, api_key="k", limits=Limits(allowed_hosts=("My.Box",))) as (_, port):
        for host in (
            "localhost",
            "localhost:8000",
            "LOCALHOST:1",
            f"127.0.0.1:{port}",
            "[::1]:8000",
            "[::1]",
            "my.box",
            "my.box:443",
        ):
            assert call(port, "GET", "/health", headers={"Host": host})[0] == 200, host
        for host in ("evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io", "box"):
            status, body, _ = call(port, "GET", "/health", headers={"Host": host})
            assert status == 421 and is_openai_error(body) and body["error"]["code"] == "host_not_allowed", host
        # refused before the key or the body are looked at
        status, body, _ = call(port, "POST", CHAT, chat("hi"), {"Host": "evil.example", "Authorization": "Bearer k"})
        assert status == 421
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)  # HTTP/1.0 may omit Host: refused too
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 421")
        sock.close()


def read_until_closed(sock, deadline=10.0):
    sock.settimeout(deadline)
    data = b""
    while True:
        piece = sock.recv(4096)
        if not piece:
            return data
        data += piece


def test_slow_heads_and_bodies_are_closed_after_the_read_timeout(model_tok):
    with served(model_tok, limits=Limits(read_timeout=1.0)) as (_, port):
        bodies, heads = [], []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"model": "tiny", '
            )  # and never the rest
            bodies.append(s)
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: loc")  # a head that never ends
            heads.append(s)
        t0 = time.perf_counter()
        assert call(port, "GET", "/health")[0] == 200  # the others are still served meanwhile
        answers = [read_until_closed(s) for s in bodies + heads]
        dt = time.perf_counter() - t0
        assert all(a.startswith(b"HTTP/1.1 408") and b"request_timeout" in a for a in answers[:20])
        assert answers[20:] == [b""] * 10  # closed without a word: there was no request to answer
        assert 0.8 < dt < 5.0, dt
        [s.close() for s in bodies + heads]


def test_connections_beyond_the_limit_get_503(model_tok):
    with served(model_tok, limits=Limits(max_connections=4, read_timeout=30)) as (_, port):
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        time.sleep(0.2)
        assert call(port, "GET", "/health")[0] == 503  # uvicorn's own answer, before the app is reached
        [s.close() for s in idle]
        for _ in range(100):
            if call(port, "GET", "/health")[0] == 200:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the connection slots never freed")


def test_fields_of_the_wrong_type_are_400(model_tok):
    bad = [
        ("max_tokens", "5"),
        ("max_tokens", True),
        ("max_tokens", 5.0),
        ("stream", "yes"),
        ("stream", 1),
        ("n", True),
        ("model", 5),
        ("temperature", "hot"),
        ("temperature", True),
        ("temperature", 3),
        ("top_p", "1"),
        ("seed", "1"),
        ("logprobs", "no"),
        ("user", 5),
        ("max_completion_tokens", "2"),
        ("stream_options", "yes"),
        ("messages", [{"role": "user", "content": 5}]),
    ]
    with served(model_tok) as (_, port):
        for key, value in bad:  # a bool is not an int, a string is not a number: OpenAI answers 400 too
            status, body, _ = call(port, "POST", CHAT, {**chat("hi"), key: value})
            assert status == 400 and is_openai_error(body), (key, value, body)
            assert body["error"]["param"].startswith(key), (key, body)
        status, body, _ = call(port, "POST", CHAT, {**chat("hi"), "stream_options": {"include_usage": "yes"}})
        assert status == 400 and body["error"]["param"] == "stream_options.include_usage"
        # the right types still pass: an int where a number is asked, sampling fields ignored
        ok = chat("hi", max_tokens=2, temperature=0, top_p=1, seed=3, stream=False, user="u", n=1, presence_penalty=0.5)
        assert call(port, "POST", CHAT, ok)[0] == 200


def test_the_bearer_scheme_is_matched_in_any_case(model_tok):
    with pytest.raises(ValueError, match="empty API key"):  # never a silent "no authentication"
        create_app(Engine(*model_tok, name="tiny"), " ")
    with served(model_tok, api_key="sekret") as (_, port):
        for value in ("Bearer sekret", "bearer sekret", "BEARER sekret", "bEaReR  sekret", " Bearer sekret "):
            assert call(port, "GET", "/v1/models", headers={"Authorization": value})[0] == 200, value
        for value in ("Basic sekret", "sekret", "Bearer wrong", "Bearersekret", "Bearer sekret2", "Bearer"):
            status, body, _ = call(port, "GET", "/v1/models", headers={"Authorization": value})
            assert status == 401 and body["error"]["code"] == "invalid_api_key", value
