"""The request body: a strict pydantic model of the Chat Completions fields (a wrong type is a 400, as at OpenAI:
`max_tokens: "5"`, `max_tokens: true` and `stream: "yes"` are refused; a bool is not an int), `parse`, which turns
the body's bytes into it, and `prepare`, which turns that into an engine `Request` (the chat template and the
tokenizer run here). The HTTP side runs both off the event loop: a 2 MB body costs the loop nothing."""

import json
from typing import Literal, Optional, Union

from obliviate.serve.engine import ApiError, Engine, Request, chat_ids


def chat_request_model():
    """The ChatRequest pydantic model (pydantic is imported here: `obliviate serve --help` stays fast)."""
    from pydantic import BaseModel, ConfigDict, Field

    strict = ConfigDict(strict=True, extra="allow")  # other OpenAI fields are accepted and ignored

    class Part(BaseModel):
        model_config = strict
        type: Literal["text"]
        text: str

    class Message(BaseModel):
        model_config = strict
        role: Literal["system", "developer", "user", "assistant"]
        content: Union[str, list[Part], None] = None
        name: Optional[str] = None

    class StreamOptions(BaseModel):
        model_config = strict
        include_usage: Optional[bool] = None

    class ChatRequest(BaseModel):
        model_config = strict
        model: str
        messages: list[Message] = Field(min_length=1)
        max_tokens: Optional[int] = Field(None, ge=1)
        max_completion_tokens: Optional[int] = Field(None, ge=1)
        n: Optional[int] = None
        stream: Optional[bool] = False
        stream_options: Optional[StreamOptions] = None
        stop: Union[str, list[str], None] = None
        tools: Optional[list] = None
        logprobs: Optional[bool] = None
        top_logprobs: Optional[int] = None
        # sampling fields: greedy decoding ignores them, but their types and ranges are OpenAI's
        temperature: Optional[float] = Field(None, ge=0, le=2)
        top_p: Optional[float] = Field(None, ge=0, le=1)
        presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
        frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
        seed: Optional[int] = None
        user: Optional[str] = None

    return ChatRequest


def validation_error(errors: list[dict]) -> ApiError:
    """pydantic's errors -> one 400 naming the first field at fault (its dotted path is the `param`)."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    msg = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        msg = "the request body is not valid JSON"
    elif not loc:
        msg = "the request body must be a JSON object (Content-Type: application/json)"
    return ApiError(400, f"{'.'.join(loc) + ': ' if loc else ''}{msg}", param=".".join(loc) or None)


def parse(model, raw: bytes):
    """The body's bytes -> a validated `model` (from `chat_request_model`), or ApiError(400)."""
    from pydantic import ValidationError

    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; RecursionError: nested too deep
        raise ApiError(400, "the request body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


def prepare(engine: Engine, body) -> Request:
    """A validated ChatRequest -> an unadmitted Request, or ApiError(400) naming the problem."""
    if body.model != engine.name:
        raise ApiError(
            400,
            f"model {body.model!r} is not served here; this server serves {engine.name!r} (see GET /v1/models)",
            param="model",
            code="model_not_found",
        )
    for key, bad in (
        ("n", body.n not in (None, 1)),
        ("stop", bool(body.stop)),
        ("tools", bool(body.tools)),
        ("logprobs", bool(body.logprobs)),
    ):
        if bad:
            raise ApiError(
                400,
                f"{key} is not supported: this server decodes one greedy reply per request",
                param=key,
                code="unsupported_parameter",
            )
    messages = [
        {
            "role": "system" if m.role == "developer" else m.role,  # OpenAI's newer name for system
            "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content or []),
        }
        for m in body.messages
    ]
    if all(m["role"] != "user" for m in messages):
        raise ApiError(400, "messages must contain a user message", param="messages")
    prompt = chat_ids(engine.tok, messages, engine.context)
    text = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    room = (engine.context - len(prompt)) if engine.context else None
    asked = body.max_completion_tokens or body.max_tokens
    if room is not None and (room < 1 or (asked or 0) > room):
        raise ApiError(
            400,
            f"this model's context length is {engine.context} tokens; the messages take "
            f"{len(prompt)} and max_tokens asks {asked or 1} more",
            param="messages",
            code="context_length_exceeded",
        )
    return Request(
        prompt, text, asked or room or 512, stream=bool(body.stream), prefill=messages[-1]["role"] == "assistant"
    )
