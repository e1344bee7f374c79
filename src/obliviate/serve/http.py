"""The HTTP side: FastAPI routes in OpenAI's Chat Completions and (legacy) Completions shapes over an `Engine`,
behind the `Gate` (Host allowlist, API key, body limit and read deadline)."""

import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from obliviate.serve.engine import ApiError, Engine, internal_error, log, worker_dead
from obliviate.serve.protect import Gate, Limits
from obliviate.serve.schema import (
    chat_request_model,
    completion_request_model,
    parse,
    prepare_chat,
    prepare_completion,
    validation_error,
)
from obliviate.serve.shapes import Chat, Text, usage


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
    ChatRequest, CompletionRequest = chat_request_model(), completion_request_model()
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

    def admit(model, prepare, raw: bytes):
        body = parse(model, raw)
        return body, prepare(engine, body)

    async def respond(http: HttpRequest, model, prepare, shape):
        engine.check_room()  # a full queue answers 429 at once, before the body is parsed and tokenised
        raw = await http.body()  # already read (and bounded) by the Gate
        loop = asyncio.get_running_loop()
        body, reqs = await loop.run_in_executor(http.app.state.tokenize, admit, model, prepare, raw)
        events = asyncio.Queue()
        for r in reqs:
            r.loop, r.events = loop, events
        engine.submit(reqs)
        shape = shape(reqs[0].logprobs is not None)
        head = {"id": f"{shape.prefix}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": engine.name}
        n = body.n or 1
        prompt_tokens = sum(len(r.prompt) for r in reqs[::n])  # the n choices of a prompt share it

        def cancel():
            for r in reqs:
                engine.cancel(r)  # a no-op once finished; frees the slot of a client that went away

        if reqs[0].stream:
            with_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _Stream(
                _events(events, len(reqs), shape, head, prompt_tokens, with_usage),
                on_close=cancel,
                media_type="text/event-stream",
            )
        done = {}
        try:
            while len(done) < len(reqs):
                try:
                    kind, index, value = await asyncio.wait_for(events.get(), 0.25)
                except asyncio.TimeoutError:
                    if await http.is_disconnected():
                        return JSONResponse({}, 499)
                    continue
                if kind == "error":
                    raise value
                if kind == "done":
                    done[index] = value
        finally:
            cancel()
        return shape.response(head, done, usage(prompt_tokens, sum(d["completion_tokens"] for d in done.values())))

    @app.post("/v1/chat/completions")
    async def chat(http: HttpRequest):
        return await respond(http, ChatRequest, prepare_chat, Chat)

    @app.post("/v1/completions")
    async def completions(http: HttpRequest):
        return await respond(http, CompletionRequest, prepare_completion, Text)

    return app


async def _events(events, choices: int, shape, head: dict, prompt_tokens: int, with_usage: bool):
    """Server-sent chunks: per choice its opening (chat: the role), its deltas and its finish reason; then the usage
    (when asked) and [DONE]. An error ends the stream with OpenAI's error object."""

    def data(obj) -> str:
        return "data: " + json.dumps(obj) + "\n\n"

    for i in range(choices):
        first = shape.first(head, i)
        if first is not None:
            yield data(first)
    done, tokens = 0, 0
    while done < choices:
        kind, index, value = await events.get()
        if kind == "delta":
            yield data(shape.delta(head, index, *value))
        elif kind == "error":
            yield data(value.body)
            break
        else:
            done, tokens = done + 1, tokens + value["completion_tokens"]
            yield data(shape.last(head, index, value))
    else:
        if with_usage:
            yield data(shape.usage_chunk(head, usage(prompt_tokens, tokens)))
    yield "data: [DONE]\n\n"
