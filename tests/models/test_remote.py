"""The endpoint client (`obliviate.models.remote`) against small standard-library HTTP servers on loopback: the
served model is checked first (unreachable URL, 401, unknown name: one line each), requests run at bounded
concurrency and come back in order, 429 and 5xx are retried, and a request that keeps failing raises one error that
keeps the replies already received."""

import json
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from obliviate.core.errors import UsageError
from obliviate.models.remote import RemoteError, RemoteModel, is_remote


@contextmanager
def stub(chat=None, models=("tiny",), models_status=200):
    """An endpoint on loopback: GET /v1/models lists `models` (or answers `models_status`); POST
    /v1/chat/completions answers `chat(body, headers) -> (status, reply text or error body, headers)`.
    Yields (base URL, the request log)."""
    log = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status, body, headers=None):
            raw = json.dumps(body).encode()
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):
            log.append(("GET", self.path, None, dict(self.headers)))
            if models_status != 200:
                return self._send(models_status, {"error": {"message": "Incorrect API key provided"}})
            self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in models]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            log.append(("POST", self.path, body, dict(self.headers)))
            status, out, headers = chat(body, self.headers)
            if status != 200:
                return self._send(status, {"error": {"message": out}}, headers)
            msg = {"role": "assistant", "content": out}
            self._send(200, {"object": "chat.completion", "choices": [{"index": 0, "message": msg}]}, headers)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", log
    finally:
        server.shutdown()
        server.server_close()


def echo(body, headers):
    return 200, "re: " + body["messages"][0]["content"], {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_is_remote():
    assert is_remote("openai:http://h:1/v1") and not is_remote("models/x") and not is_remote(None)


def test_unreachable_url_is_one_line_naming_it():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(UsageError, match="unreachable") as e:
        RemoteModel("openai:" + url)
    assert url in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UsageError, match="http:// or https://"):
        RemoteModel("openai:127.0.0.1:8000/v1")


def test_a_401_names_the_environment_variable(monkeypatch):
    monkeypatch.setenv("OBLIVIATE_TEST_KEY", "sk-wrong")
    with stub(models_status=401) as (url, log):
        with pytest.raises(UsageError, match=r"401.*\$OBLIVIATE_TEST_KEY was refused"):
            RemoteModel("openai:" + url, key_env="OBLIVIATE_TEST_KEY")
        assert log[0][3]["Authorization"] == "Bearer sk-wrong"  # the key went as a bearer token
        with pytest.raises(UsageError, match="--api-key-env VAR"):  # no key given at all
            RemoteModel("openai:" + url)
    monkeypatch.delenv("OBLIVIATE_TEST_KEY")
    with pytest.raises(UsageError, match="OBLIVIATE_TEST_KEY is not set"):
        RemoteModel("openai:http://127.0.0.1:1/v1", key_env="OBLIVIATE_TEST_KEY")


def test_the_served_model_is_checked_against_the_listing():
    with stub(models=("alpha", "beta")) as (url, _):
        with pytest.raises(UsageError, match="'gamma' is not served at .*; it serves: alpha, beta"):
            RemoteModel("openai:" + url, served_model="gamma")
        with pytest.raises(UsageError, match=r"serves 2 models \(alpha, beta\): choose one with --served-model"):
            RemoteModel("openai:" + url)
        assert RemoteModel("openai:" + url, served_model="beta").name == "beta"
    with stub(models=("only",)) as (url, _):
        assert RemoteModel("openai:" + url + "/").name == "only"  # the one listed model; a trailing slash is fine


def test_429_and_5xx_are_retried_then_succeed():
    calls = []

    def flaky(body, headers):
        calls.append(body["messages"][0]["content"])
        if len(calls) == 1:
            return 429, "slow down", {"Retry-After": "0"}
        if len(calls) == 2:
            return 503, "busy", {}
        return echo(body, headers)

    with stub(flaky) as (url, _):
        m = RemoteModel("openai:" + url, retries=3, backoff=0.01)
        assert m.chat([[{"role": "user", "content": "hi"}]], max_tokens=5) == ["re: hi"]
    assert calls == ["hi", "hi", "hi"]


def test_a_request_that_keeps_failing_raises_one_error_and_keeps_the_rest():
    def broken_c(body, headers):
        q = body["messages"][0]["content"]
        return (500, "boom", {}) if q == "c" else echo(body, headers)

    with stub(broken_c) as (url, log):
        m = RemoteModel("openai:" + url, retries=2, backoff=0.01, concurrency=1)
        convs = [[{"role": "user", "content": q}] for q in "abcd"]
        with pytest.raises(RemoteError, match=r"request 3 of 4: .*answered 500: boom \(after 3 tries\)") as e:
            m.chat(convs)
    # what came back is kept (d too, when the worker had taken it before the failure was seen)
    assert e.value.done in ({0: "re: a", 1: "re: b"}, {0: "re: a", 1: "re: b", 3: "re: d"})
    sent = [b["messages"][0]["content"] for _, p, b, _ in log if p.endswith("/chat/completions")]
    assert sent[:5] == list("abccc")


def test_a_client_error_is_not_retried():
    with stub(lambda body, headers: (400, "context length exceeded", {})) as (url, log):
        m = RemoteModel("openai:" + url, retries=3, backoff=0.01)
        with pytest.raises(RemoteError, match="400: context length exceeded$"):
            m.chat([[{"role": "user", "content": "x"}]])
    assert sum(p.endswith("/chat/completions") for _, p, _, _ in log) == 1


def test_order_is_kept_and_concurrency_bounded():
    active, peak, lock = [0], [0], threading.Lock()

    def slow(body, headers):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02 * (8 - int(body["messages"][0]["content"])))  # the first requests finish last
        with lock:
            active[0] -= 1
        return echo(body, headers)

    with stub(slow) as (url, _):
        m = RemoteModel("openai:" + url, concurrency=3)
        out = m.chat([[{"role": "user", "content": str(i)}] for i in range(8)])
    assert out == [f"re: {i}" for i in range(8)]
    assert peak[0] == 3  # three in flight at once, never more


def test_request_body_and_prefill_continuation():
    with stub(echo) as (url, log):
        m = RemoteModel("openai:" + url)
        prefilled = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "Sure, here"}]
        m.chat([[{"role": "user", "content": "q"}], prefilled], max_tokens=7, seed=3, continue_final=True)
    plain, cont = sorted((b for _, p, b, _ in log if b), key=lambda b: len(b["messages"]))
    assert plain == {
        "model": "tiny",
        "messages": [{"role": "user", "content": "q"}],
        "max_tokens": 7,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 3,
    }
    assert cont["messages"] == prefilled
    assert cont["continue_final_message"] is True and cont["add_generation_prompt"] is False
    with stub(echo) as (url, log):
        got = RemoteModel("openai:" + url).completions([[{"role": "user", "content": "q"}]], logprobs=2)
    assert got == [{"index": 0, "message": {"role": "assistant", "content": "re: q"}}]  # the whole first choice
    assert log[-1][2]["logprobs"] is True and log[-1][2]["top_logprobs"] == 2
