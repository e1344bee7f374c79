"""A model behind an OpenAI-compatible endpoint (`openai:URL`, URL the base ending in /v1): vLLM's `vllm serve`,
TGI, llama.cpp's server, `obliviate serve` or a vendor API, spoken to with the standard library alone (urllib).

`RemoteModel(spec, served_model, key_env)` checks the endpoint once, before any work: `GET URL/models` must answer
(else one line naming the URL; 401 or 403 names the environment variable the key came from), and the served model
must be one of those it lists (else one line listing them; with no `served_model`, the one model it lists). Then
`.chat(conversations)` sends `POST URL/chat/completions` per conversation, at most `concurrency` at once, and
returns the replies in the conversations' order. A request answered 429 or 5xx, or cut off by the network or the
`timeout`, is sent again after 1, 2, 4 ... seconds (a 429's `Retry-After` when it says longer), `retries` times;
one that still fails raises `RemoteError` (a UsageError: exit 2, one line), which keeps the replies already
received in `.done`, so no reply is lost with it.

`continue_final=True` continues a conversation whose last message is the assistant's (a prefill) instead of
opening a new reply: the request carries vLLM's `continue_final_message: true, add_generation_prompt: false`
(https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html, "Extra parameters for Chat API"), which
`obliviate serve` honours too; the reply is the continuation alone.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from urllib.parse import urlparse

from obliviate.core.errors import UsageError

PREFIX = "openai:"


def is_remote(spec) -> bool:
    """True for a model named `openai:URL` (an endpoint), False for a directory or hub id."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def load_tokenizer(path):
    """The tokenizer of a served model, from its local directory (`--tokenizer DIR`): what cuts an answer into the
    first k tokens that a prefill sends as text. Never runs remote code."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise UsageError(f"--tokenizer {path}: not a directory (give the served model's tokenizer directory)")
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - whatever the library raises on a directory without a tokenizer
        raise UsageError(f"--tokenizer {path}: cannot load a tokenizer ({str(e).splitlines()[0][:200]})") from None


class RemoteError(UsageError):
    """A request the endpoint did not answer, after its retries; `.done` holds {index: reply} of those it did,
    `.status` the HTTP status of the last answer (None: no answer)."""

    def __init__(self, message: str, done: dict[int, str] | None = None, status: int | None = None):
        super().__init__(message)
        self.done, self.status = done or {}, status


class _Failed(Exception):
    """One attempt failed: `retry` says whether another may succeed; `wait` is the server's Retry-After."""

    def __init__(self, message: str, retry: bool, status: int | None = None, wait: float = 0.0):
        super().__init__(message)
        self.retry, self.status, self.wait = retry, status, wait


def _error_text(e: urllib.error.HTTPError) -> str:
    """The endpoint's own error message (OpenAI's {"error": {"message"}} or a plain body), one line, short."""
    try:
        raw = e.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the status is reported without the body
        raw = ""
    try:
        body = json.loads(raw)
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message") or err.get("detail") if isinstance(err, dict) else err
        raw = msg if isinstance(msg, str) else json.dumps(msg)
    except ValueError:
        pass
    line = " ".join(str(raw).split())
    return line[:200] + ("..." if len(line) > 200 else "")


class RemoteModel:
    """A chat model at an OpenAI-compatible endpoint (see the module docstring); `.name` is the served model."""

    def __init__(
        self,
        spec: str,
        served_model: str | None = None,
        key_env: str | None = None,
        concurrency: int = 4,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        key_flag: str = "--api-key-env",  # the option that named key_env, for the error lines
    ):
        if not is_remote(spec):
            raise UsageError(f"a remote model is {PREFIX}URL (e.g. {PREFIX}http://127.0.0.1:8000/v1), got {spec!r}")
        self.url = spec[len(PREFIX) :].rstrip("/")
        parsed = urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"{spec}: the URL must be http:// or https:// with a host: {PREFIX}http://HOST:PORT/v1")
        if concurrency < 1 or retries < 0 or timeout <= 0:
            raise UsageError("--concurrency must be >= 1, retries >= 0 and the timeout > 0")
        self.key_env, self.key, self.key_flag = key_env, None, key_flag
        if key_env:
            self.key = os.environ.get(key_env)
            if not self.key:
                raise UsageError(f"{key_flag} {key_env}: the environment variable {key_env} is not set (or empty)")
        self.spec, self.concurrency, self.timeout, self.retries, self.backoff = (
            spec,
            concurrency,
            timeout,
            retries,
            backoff,
        )
        self.name = self._resolve(served_model)

    def __repr__(self) -> str:
        return f"RemoteModel({self.spec!r}, served_model={self.name!r})"

    # ---- one HTTP request ----
    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            status = e.code
            if status in (401, 403):
                how = (
                    f"the key in ${self.key_env} was refused"
                    if self.key_env
                    else f"it needs an API key: name the environment variable holding it with {self.key_flag} VAR"
                )
                raise UsageError(f"{self.url} answered {status} ({_error_text(e)}): {how}") from None
            after = e.headers.get("Retry-After", "") if e.headers else ""
            retry = status == 429 or status >= 500
            wait_s = float(after) if after.replace(".", "", 1).isdigit() else 0.0
            raise _Failed(f"{self.url}{path} answered {status}: {_error_text(e)}", retry, status, wait_s) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # refused, reset, DNS, timeout
            reason = getattr(e, "reason", e)
            raise _Failed(f"{self.url} is unreachable ({reason})", True) from None
        except ValueError:
            raise _Failed(f"{self.url}{path} answered with a body that is not JSON", True) from None

    def _with_retries(self, method: str, path: str, body: dict | None = None) -> dict:
        for attempt in range(self.retries + 1):
            try:
                return self._request(method, path, body)
            except _Failed as e:
                if not e.retry or attempt == self.retries:
                    tries = f" (after {attempt + 1} tries)" if attempt else ""
                    raise RemoteError(f"{e}{tries}", status=e.status) from None
                time.sleep(min(60.0, max(e.wait, self.backoff * 2**attempt)))
        raise AssertionError("unreachable")

    # ---- the served model ----
    def _resolve(self, served_model: str | None) -> str:
        """The served model's name, checked against `GET /models`; an endpoint without that route is taken at
        its word when a name is given."""
        try:
            listing = self._request("GET", "/models")
        except _Failed as e:
            if e.status in (404, 405) and served_model:
                return served_model
            if e.status is None:
                raise UsageError(f"{e}: start the server, or check the URL (it ends in /v1)") from None
            raise UsageError(f"{e}") from None
        names = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict) and m.get("id")]
        if served_model is None:
            if len(names) == 1:
                return names[0]
            if not names:
                raise UsageError(f"{self.url}/models lists no model: name the served model with --served-model NAME")
            listed = ", ".join(names)
            raise UsageError(f"{self.url} serves {len(names)} models ({listed}): choose one with --served-model")
        if served_model not in names:
            raise UsageError(
                f"--served-model {served_model!r} is not served at {self.url}; it serves: {', '.join(names) or 'none'}"
            )
        return served_model

    # ---- chat ----
    def _body(self, messages, max_tokens, temperature, top_p, seed, continue_final, logprobs, stop=None) -> dict:
        body = {
            "model": self.name,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = list(stop)
        if logprobs:
            body |= {"logprobs": True, "top_logprobs": logprobs}
        if continue_final and messages and messages[-1].get("role") == "assistant":
            body |= {"continue_final_message": True, "add_generation_prompt": False}
        return body

    def completions(
        self,
        conversations: list[list[dict]],
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | list[int] | None = None,
        continue_final: bool = False,
        logprobs: int = 0,
        stop: list[str] | None = None,
    ) -> list[dict]:
        """The endpoint's first choice for each conversation ({"message", "finish_reason", "logprobs"...}), in
        order; see `chat`. `logprobs` > 0 asks for that many top log-probabilities per reply token. `seed` may be a
        list: one seed per conversation. `stop`: the reply ends before the first of these strings."""
        if max_tokens < 1:
            raise UsageError(f"max_tokens must be >= 1, got {max_tokens}")

        def one(i, messages):
            s = seed[i] if isinstance(seed, (list, tuple)) else seed
            body = self._body(messages, max_tokens, temperature, top_p, s, continue_final, logprobs, stop)
            return self._first_choice("/chat/completions", body)

        return self._each(conversations, one)

    def _first_choice(self, path: str, body: dict) -> dict:
        got = self._with_retries("POST", path, body)
        choices = got.get("choices") if isinstance(got, dict) else None
        if not choices or not isinstance(choices[0], dict):
            raise RemoteError(f"{self.url}{path} answered without choices: {str(got)[:200]}")
        return choices[0]

    def _each(self, items: list, one) -> list[dict]:
        """one(i, item) for every item, at most `concurrency` at once, in order; the first failure raises a
        RemoteError that keeps the text of the choices already received in `.done`."""
        if not items:
            return []
        with ThreadPoolExecutor(min(self.concurrency, len(items))) as pool:
            futures = {pool.submit(one, i, c): i for i, c in enumerate(items)}
            for f in wait(futures, return_when=FIRST_EXCEPTION).not_done:
                f.cancel()  # the queued ones are dropped after a failure; those already sent run to their end
        ran = [f for f in futures if not f.cancelled()]
        failed = [f for f in ran if f.exception() is not None]
        done = {futures[f]: f.result() for f in ran if f.exception() is None}
        if failed:
            first = min(failed, key=lambda f: futures[f])
            e = first.exception()
            replies = {i: (c.get("message") or {}).get("content") or c.get("text") or "" for i, c in done.items()}
            what = f"request {futures[first] + 1} of {len(items)}"
            raise RemoteError(f"{what}: {e}", replies, e.status) if isinstance(e, RemoteError) else e
        return [done[i] for i in range(len(items))]

    def text_completions(
        self,
        prompts: list[str],
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        add_special_tokens: bool | None = None,
    ) -> list[dict]:
        """The first choice ({"text", "finish_reason"...}) of `POST URL/completions` for each raw-text prompt (no chat
        template), in order. `add_special_tokens` False (vLLM's field, which `obliviate serve` takes too): the
        prompt is tokenised as it is, without the BOS the server's tokenizer would add."""
        if max_tokens < 1:
            raise UsageError(f"max_tokens must be >= 1, got {max_tokens}")

        def one(i, prompt):
            body = {"model": self.name, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
            body |= {"top_p": top_p} | ({"seed": seed} if seed is not None else {})
            if add_special_tokens is not None:
                body["add_special_tokens"] = add_special_tokens
            return self._first_choice("/completions", body)

        return self._each(prompts, one)

    def supports(self, feature: str) -> bool:
        """Whether the endpoint offers `feature`, asked once with a one-token request (then remembered): "logprobs"
        (chat replies with their top log-probabilities) or "completions" (`POST URL/completions`, raw text). An
        answer of 400, 404, 405, 422 or 501 is a no; any other failure raises."""
        known = self.__dict__.setdefault("_supports", {})
        if feature not in known:
            try:
                if feature == "logprobs":
                    got = self.completions([[{"role": "user", "content": "Hi"}]], max_tokens=1, logprobs=1)[0]
                    content = (got.get("logprobs") or {}).get("content") or []
                    known[feature] = bool(content) and isinstance(content[0].get("top_logprobs"), list)
                elif feature == "completions":
                    known[feature] = isinstance(self.text_completions(["Hi"], max_tokens=1)[0].get("text"), str)
                else:
                    raise ValueError(f"unknown endpoint feature {feature!r}")
            except RemoteError as e:
                if e.status not in (400, 404, 405, 422, 501):
                    raise
                known[feature] = False
        return known[feature]

    def chat(
        self,
        conversations: list[list[dict]],
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | list[int] | None = None,
        continue_final: bool = False,
        stop: list[str] | None = None,
    ) -> list[str]:
        """One reply per conversation (lists of {"role", "content"}), in order, at most `concurrency` requests at
        once. `temperature` 0 is greedy; `seed`, where the endpoint honours it, makes sampling repeatable (a list:
        one seed per conversation). `continue_final`: a conversation ending with an assistant message is continued
        from it (prefill). `stop`: each reply ends before the first of these strings."""
        got = self.completions(conversations, max_tokens, temperature, top_p, seed, continue_final, stop=stop)
        return [(c.get("message") or {}).get("content") or "" for c in got]
