"""The HTTP side: FastAPI routes in OpenAI's Chat Completions shape over an `Engine`, and a loopback server
thread for tests and benchmarks."""

import asyncio
import hmac
import json
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Literal, Optional, Union

from obliviate.serve.engine import ApiError, Engine, Request, chat_ids


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
    return Request(prompt, text, asked or room or 512, stream=bool(body.stream),
                   prefill=messages[-1]["role"] == "assistant")


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
