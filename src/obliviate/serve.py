"""An OpenAI-compatible chat server over the one decode loop (`obliviate.generation.decode`), guards applied.

It speaks the part of OpenAI's Chat Completions API (https://platform.openai.com/docs/api-reference/chat) that a
greedy, guarded decoder can honour: `POST /v1/chat/completions` (a `chat.completion` object, or server-sent
`chat.completion.chunk` events ending with `data: [DONE]`), `GET /v1/models`, `GET /health`. Decoding is greedy,
as in the audits, so a guard's verdict is reproducible: sampling fields (`temperature`, `top_p`, `seed`...) are
accepted and ignored. `finish_reason` is "stop" (EOS), "length" (`max_tokens` / `max_completion_tokens`; default:
the rest of the context) or "content_filter" (a guard halted the reply; its content is the guard's refusal). A
trailing assistant message is a prefill (`continue_final_message=True`); the reply is only the continuation.
Errors have OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: 400 bad input (FastAPI's 422
included), 401 missing or wrong key, 429 when `max_queue` requests are already queued or decoding.

Batching. One worker thread owns the model (one decode over a batch costs little more than one row). It takes the
first queued request, waits up to `batch_window_ms` for more (up to `max_batch`), runs one `decode` with the
batch's largest `max_tokens`, and hands tokens and results to the asyncio loop (`loop.call_soon_threadsafe`). A
row that reaches its own `max_tokens` is cut there (greedy: the same prefix as a shorter run) and answered at
once; an internal guard halts it, and the rows of clients that disconnected, at the next token.

Streaming. Without guards that watch the reply grow, text streams token by token: the tokens so far are decoded
again and the difference is sent, so multi-byte characters come out whole and the deltas add up to the
non-streamed `content` (`.strip()` included). With `on_step` guards (every k tokens) text is released only once
the next check has passed it, so a halted reply never streams what the guard stopped: the refusal follows what
had passed, with finish_reason "content_filter". With `on_finish` guards the whole reply is held to the end.
"""

import asyncio
import collections
import hmac
import json
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional, Union

from obliviate.guards import Guard

CANCELLED = "cancelled"  # the internal guard's name: rows it halts were cancelled or already served


class ApiError(Exception):
    """An error the client sees, in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": type, "param": param, "code": code}}


def chat_ids(tok, messages: list[dict]) -> list[int]:
    """Messages -> prompt ids through the tokenizer's chat template, as `models.encode.prompt_ids` does for one
    question (template as text, then tokenised without added specials). A trailing assistant message is
    continued (prefill) instead of opening a new assistant turn."""
    prefill = messages[-1]["role"] == "assistant"
    try:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=not prefill,
                                       continue_final_message=prefill)
    except Exception as e:  # a template that rejects the conversation (e.g. roles that must alternate)
        raise ApiError(400, f"the model's chat template rejects these messages: {e}", param="messages") from None
    return tok(text, add_special_tokens=False)["input_ids"]


@dataclass(eq=False)
class Request:
    """One admitted chat request. The worker thread writes tokens/sent/finished; the event loop reads events."""
    prompt: list[int]
    text: Optional[str]  # the last user message: what guards' on_request reads
    max_tokens: int
    stream: bool = False
    loop: Any = None
    events: Any = None  # asyncio.Queue of ("delta", str) | ("done", dict) | ("error", str)
    tokens: list[int] = field(default_factory=list)
    sent: str = ""
    finished: bool = False
    cancelled: bool = False
    released: bool = False

    def post(self, kind: str, value) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed (shutdown): nobody is listening any more
            pass


@dataclass
class _Release(Guard):
    """Internal: halts, every token, the rows whose request was cancelled (client gone) or already served."""
    name: ClassVar[str] = CANCELLED
    every = 1
    engine: Any = None
    batch: list = field(default_factory=list)

    def on_step(self, step, ids, session):
        for r, row in enumerate(session.rows):
            req = self.batch[row.index]
            if req.cancelled or req.finished or len(req.tokens) >= req.max_tokens:
                session.halt(r, CANCELLED, "")
                if req.cancelled:
                    self.engine.release(req)


def _overrides(guard, hook: str) -> bool:
    return getattr(type(guard), hook) is not getattr(Guard, hook)


class Engine:
    """The model, its guards, the admission queue and the one worker thread that decodes micro-batches."""

    def __init__(self, model, tok, guards=None, *, name: str = "model", max_batch: int = 16, max_queue: int = 64,
                 batch_window_ms: float = 10.0):
        from obliviate.guards import attached

        # guards=None: those attached to the model (obliviate.guards.attach), as decode() itself does
        self.guards = attached(model) if guards is None else list(guards)
        self.model, self.tok, self.name = model, tok, name
        self.max_batch, self.max_queue, self.window = max_batch, max_queue, batch_window_ms / 1000
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.context = getattr(cfg, "max_position_embeddings", None)
        eos = tok.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.hold_all = any(_overrides(g, "on_finish") for g in self.guards)
        self.checks = [g.every for g in self.guards if _overrides(g, "on_step") and getattr(g, "every", 0) > 0]
        self.queue: collections.deque[Request] = collections.deque()
        self.cond = threading.Condition(threading.RLock())
        self.admitted = 0  # queued + decoding: what max_queue bounds
        self.cancelled_total = 0
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)
        self._stop, self._thread = False, None

    # --- admission (event-loop side) ---
    def submit(self, req: Request) -> None:
        with self.cond:
            if self.admitted >= self.max_queue:
                raise ApiError(429, f"the server is busy ({self.max_queue} requests queued or decoding); retry",
                               type="rate_limit_error", code="queue_full")
            self.admitted += 1
            self.queue.append(req)
            self.cond.notify()

    def cancel(self, req: Request) -> None:
        """The client went away: drop a queued request now; a decoding row is halted at its next token."""
        if req.finished or req.cancelled:
            return
        req.cancelled = True
        with self.cond:
            self.cancelled_total += 1
            if req in self.queue:
                self.queue.remove(req)
                self.release(req)

    def release(self, req: Request) -> None:
        with self.cond:  # an RLock: cancel() calls this holding it
            if not req.released:
                req.released, self.admitted = True, self.admitted - 1

    # --- the worker thread ---
    def start(self) -> None:
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="obliviate-decode", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _next_batch(self) -> list[Request]:
        with self.cond:
            while not self.queue and not self._stop:
                self.cond.wait(0.5)
            if self._stop:
                return []
            batch = [self.queue.popleft()]
            deadline = time.monotonic() + self.window
            while len(batch) < self.max_batch:
                if self.queue:
                    batch.append(self.queue.popleft())
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._stop:
                    break
                self.cond.wait(left)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return
            try:
                self._run(batch)
            except Exception as e:  # a failing guard or model must not kill the server: fail this batch only
                for req in batch:
                    if not req.finished and not req.cancelled:
                        req.finished = True
                        req.post("error", f"{type(e).__name__}: {e}")
            finally:
                for req in batch:
                    self.release(req)

    def _run(self, batch: list[Request]) -> None:
        from obliviate.generation import decode

        self.batch_sizes.append(len(batch))
        release = _Release(engine=self, batch=batch)
        replies = decode(self.model, self.tok, [r.prompt for r in batch], texts=[r.text for r in batch],
                         guards=[*self.guards, release], max_new_tokens=max(r.max_tokens for r in batch),
                         batch_size=len(batch), on_token=lambda i, t: self._on_token(batch[i], t))
        for req, rep in zip(batch, replies):
            if not req.finished and not req.cancelled:
                self._settle(req, rep)

    def _on_token(self, req: Request, token: int) -> None:
        if req.finished or req.cancelled or len(req.tokens) >= req.max_tokens:
            return
        req.tokens.append(token)
        n = len(req.tokens)
        if not self.hold_all and (token in self.eos or n == req.max_tokens):
            # every check before this token has passed, and none runs after the last one: the reply is final
            self._finish(req, self._text(req.tokens), "stop" if token in self.eos else "length")
        elif req.stream and not self.hold_all:
            # checks at token counts <= n - 1 have run; release text only up to the last one every guard made
            safe = min([(n - 1) // k * k for k in self.checks], default=n)
            self._push(req, self._text(req.tokens[:safe], partial=True))

    def _settle(self, req: Request, rep) -> None:
        """The decode result for a row that was not finished token by token (hold_all, or a guard halted it)."""
        n, m = len(req.tokens), req.max_tokens
        if rep.halted_by is None and len(rep.token_ids) <= m:
            self._finish(req, rep.text, rep.finish_reason)
        elif rep.halted_by not in (None, CANCELLED) and n < m:  # halted within this request's own budget
            self._finish(req, rep.text, "content_filter")
        else:  # cut to max_tokens; on_finish guards judge the text this request would have got on its own
            from obliviate.generation import Row

            text = self._text(req.tokens[:m])
            reason = "stop" if req.tokens and req.tokens[-1] in self.eos else "length"
            row = Row(index=0, text=req.text, scores=dict(rep.scores))
            for g in self.guards:
                if _overrides(g, "on_finish") and row.halted_by is None:
                    g.on_finish(text, row)
            if row.halted_by is not None:
                text, reason = row.refusal or "", "content_filter"
            self._finish(req, text, reason)

    def _text(self, tokens: list[int], partial: bool = False) -> str:
        text = self.tok.decode(tokens, skip_special_tokens=True)
        # a partial text may end inside a multi-byte character, and its trailing space may be stripped later
        return text.lstrip().rstrip("\ufffd").rstrip() if partial else text.strip()

    def _push(self, req: Request, text: str) -> None:
        if len(text) > len(req.sent) and text.startswith(req.sent):
            req.post("delta", text[len(req.sent):])
            req.sent = text

    def _finish(self, req: Request, text: str, reason: str) -> None:
        req.finished = True
        if req.stream and reason == "content_filter" and text:
            req.post("delta", text)  # the refusal, after whatever text had passed the checks
        elif req.stream:
            self._push(req, text)
        req.post("done", {"content": text, "finish_reason": reason,
                          "completion_tokens": min(len(req.tokens), req.max_tokens)})
        self.release(req)


# --- the HTTP side ------------------------------------------------------------------------------------------


def _models():
    from pydantic import BaseModel, ConfigDict, Field

    class Part(BaseModel):
        type: Literal["text"]
        text: str

    class Message(BaseModel):
        model_config = ConfigDict(extra="allow")
        role: Literal["system", "developer", "user", "assistant"]
        content: Union[str, list[Part], None] = None

    class ChatRequest(BaseModel):
        model_config = ConfigDict(extra="allow")  # other OpenAI fields are accepted; see the module docstring
        model: str
        messages: list[Message] = Field(min_length=1)
        max_tokens: Optional[int] = Field(None, ge=1)
        max_completion_tokens: Optional[int] = Field(None, ge=1)
        n: Optional[int] = None
        stream: Optional[bool] = False
        stream_options: Optional[dict] = None
        stop: Union[str, list[str], None] = None
        tools: Optional[list] = None
        logprobs: Optional[bool] = None

    return ChatRequest


def prepare(engine: Engine, body) -> Request:
    """A validated ChatRequest -> an unadmitted Request, or ApiError(400) naming the problem."""
    if body.model != engine.name:
        raise ApiError(400, f"model {body.model!r} is not served here; this server serves {engine.name!r} "
                       "(see GET /v1/models)", param="model", code="model_not_found")
    for key, bad in (("n", body.n not in (None, 1)), ("stop", bool(body.stop)), ("tools", bool(body.tools)),
                     ("logprobs", bool(body.logprobs))):
        if bad:
            raise ApiError(400, f"{key} is not supported: this server decodes one greedy reply per request",
                           param=key, code="unsupported_parameter")
    messages = [{"role": "system" if m.role == "developer" else m.role,  # OpenAI's newer name for system
                 "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content or [])}
                for m in body.messages]
    if all(m["role"] != "user" for m in messages):
        raise ApiError(400, "messages must contain a user message", param="messages")
    prompt = chat_ids(engine.tok, messages)
    text = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    room = (engine.context - len(prompt)) if engine.context else None
    asked = body.max_completion_tokens or body.max_tokens
    if room is not None and (room < 1 or (asked or 0) > room):
        raise ApiError(400, f"this model's context length is {engine.context} tokens; the messages take "
                       f"{len(prompt)} and max_tokens asks {asked or 1} more", param="messages",
                       code="context_length_exceeded")
    return Request(prompt, text, asked or room or 512, stream=bool(body.stream))


class _Auth:
    """ASGI middleware: /v1/* needs `Authorization: Bearer KEY` (checked before the body is parsed)."""

    def __init__(self, app, key: str):
        self.app, self.key = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            got = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.key):
                from starlette.responses import JSONResponse

                err = ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                               code="invalid_api_key")
                return await JSONResponse(err.body, err.status)(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(engine: Engine, api_key: str | None = None):
    """The FastAPI app. Its lifespan starts and stops the engine's worker thread."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request as HttpRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    ChatRequest = _models()

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.close()

    app = FastAPI(title="obliviate", lifespan=lifespan)
    if api_key:
        app.add_middleware(_Auth, key=api_key)

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body, e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg = "the request body is not valid JSON"
        elif not loc:
            msg = "the request body must be a JSON object (Content-Type: application/json)"
        return JSONResponse(ApiError(400, f"{'.'.join(loc) + ': ' if loc else ''}{msg}",
                                     param=".".join(loc) or None).body, 400)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        return JSONResponse(ApiError(e.status_code, str(e.detail), code=str(e.status_code)).body, e.status_code)

    @app.exception_handler(Exception)
    async def internal(request, e: Exception):
        return JSONResponse(ApiError(500, f"{type(e).__name__}: {e}", type="server_error").body, 500)

    class _Stream(StreamingResponse):
        """A StreamingResponse that cancels its request however the stream ends (a disconnect included)."""

        def __init__(self, content, on_close, **kw):
            super().__init__(content, **kw)
            self.on_close = on_close

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.on_close()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.name, "admitted": engine.admitted, "queued": len(engine.queue)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0,
                                            "owned_by": "obliviate"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: HttpRequest):
        req = prepare(engine, body)
        req.loop, req.events = asyncio.get_running_loop(), asyncio.Queue()
        engine.submit(req)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": engine.name}

        def usage(done):
            return {"prompt_tokens": len(req.prompt), "completion_tokens": done["completion_tokens"],
                    "total_tokens": len(req.prompt) + done["completion_tokens"]}
        if req.stream:
            with_usage = bool((body.stream_options or {}).get("include_usage"))
            return _Stream(_events(req, head, usage, with_usage), on_close=lambda: engine.cancel(req),
                           media_type="text/event-stream")
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(req.events.get(), 0.25)
                except asyncio.TimeoutError:
                    if await http.is_disconnected():
                        return JSONResponse({}, 499)
                    continue
                if kind == "error":
                    raise ApiError(500, value, type="server_error")
                if kind == "done":
                    break
        finally:
            engine.cancel(req)  # a no-op once finished; frees the slot of a client that went away
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": value["content"]},
                             "finish_reason": value["finish_reason"], "logprobs": None}],
                "usage": usage(value)}

    return app


async def _events(req: Request, head: dict, usage, with_usage: bool):
    """Server-sent `chat.completion.chunk` events: the role, content deltas, the finish reason, [DONE]."""
    def chunk(delta, reason=None, **extra):
        return "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}], **extra}) + "\n\n"

    yield chunk({"role": "assistant", "content": ""})
    while True:
        kind, value = await req.events.get()
        if kind == "delta":
            yield chunk({"content": value})
        elif kind == "error":
            yield "data: " + json.dumps(ApiError(500, value, type="server_error").body) + "\n\n"
            break
        else:
            yield chunk({}, value["finish_reason"])
            if with_usage:
                yield "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": [],
                                             "usage": usage(value)}) + "\n\n"
            break
    yield "data: [DONE]\n\n"


@contextmanager
def background_server(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
    """Run `app` under uvicorn in a thread (tests, benchmarks); yields the bound port; stops it on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="obliviate-serve", daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - t0 > timeout:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout)
