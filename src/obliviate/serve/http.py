"""The HTTP side: FastAPI routes in OpenAI's Chat Completions shape over an `Engine`, behind the `Gate`
(Host allowlist, API key, body limit and read deadline)."""

import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from obliviate.serve.engine import ApiError, Engine, Request, internal_error, log, worker_dead
from obliviate.serve.protect import Gate, Limits
from obliviate.serve.schema import chat_request_model, parse, prepare, validation_error


def create_app(engine: Engine, api_key: str | None = None, limits: Limits | None = None):
    """The FastAPI app (its `Limits` in `app.state.limits`, for `uvicorn_server`). Its lifespan starts and stops the
    engine's worker thread and the one thread that tokenises requests off the event loop (one: the tokenizer is
    shared with the worker, and a fast tokenizer may fail when more threads use it at once)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi import Request as HttpRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    if api_key is not None and not api_key.strip():
        raise ValueError("an empty API key would let everyone in: pass a key, or None for no key")
    ChatRequest = chat_request_model()
    limits = limits or Limits()

    @asynccontextmanager
    async def lifespan(app):
        app.state.tokenize = ThreadPoolExecutor(1, thread_name_prefix="obliviate-tokenize")
        engine.start()
        yield
        engine.close()
        app.state.tokenize.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="obliviate", lifespan=lifespan)
    app.state.limits = limits
    app.add_middleware(Gate, limits=limits, api_key=api_key)

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body, e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        return JSONResponse(validation_error(e.errors()).body, 400)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        return JSONResponse(ApiError(e.status_code, str(e.detail), code=str(e.status_code)).body, e.status_code)

    @app.exception_handler(Exception)
    async def internal(request, e: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=e)  # the cause; never the body
        return JSONResponse(internal_error().body, 500)

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
        state = {"model": engine.name, "admitted": engine.admitted, "queued": len(engine.queue)}
        if not engine.alive():
            return JSONResponse({"status": "unavailable", **state, **worker_dead().body}, 503)
        return {"status": "ok", **state}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "obliviate"}],
        }

    def admit(raw: bytes):
        body = parse(ChatRequest, raw)
        return body, prepare(engine, body)

    @app.post("/v1/chat/completions")
    async def chat(http: HttpRequest):
        engine.check_room()  # a full queue answers 429 at once, before the body is parsed and tokenised
        raw = await http.body()  # already read (and bounded) by the Gate
        body, req = await asyncio.get_running_loop().run_in_executor(http.app.state.tokenize, admit, raw)
        req.loop, req.events = asyncio.get_running_loop(), asyncio.Queue()
        engine.submit(req)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": engine.name}

        def usage(done):
            return {
                "prompt_tokens": len(req.prompt),
                "completion_tokens": done["completion_tokens"],
                "total_tokens": len(req.prompt) + done["completion_tokens"],
            }

        if req.stream:
            with_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _Stream(
                _events(req, head, usage, with_usage),
                on_close=lambda: engine.cancel(req),
                media_type="text/event-stream",
            )
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(req.events.get(), 0.25)
                except asyncio.TimeoutError:
                    if await http.is_disconnected():
                        return JSONResponse({}, 499)
                    continue
                if kind == "error":
                    raise value
                if kind == "done":
                    break
        finally:
            engine.cancel(req)  # a no-op once finished; frees the slot of a client that went away
        return {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": value["content"]},
                    "finish_reason": value["finish_reason"],
                    "logprobs": None,
                }
            ],
            "usage": usage(value),
        }

    return app


async def _events(req: Request, head: dict, usage, with_usage: bool):
    """Server-sent `chat.completion.chunk` events: the role, content deltas, the finish reason, [DONE]."""

    def chunk(delta, reason=None, **extra):
        return (
            "data: "
            + json.dumps(
                {
                    **head,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}],
                    **extra,
                }
            )
            + "\n\n"
        )

    yield chunk({"role": "assistant", "content": ""})
    while True:
        kind, value = await req.events.get()
        if kind == "delta":
            yield chunk({"content": value})
        elif kind == "error":
            yield "data: " + json.dumps(value.body) + "\n\n"
            break
        else:
            yield chunk({}, value["finish_reason"])
            if with_usage:
                yield (
                    "data: "
                    + json.dumps({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage(value)})
                    + "\n\n"
                )
            break
    yield "data: [DONE]\n\n"
