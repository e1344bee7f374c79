"""The request bodies: strict pydantic models of the Chat Completions and (legacy) Completions fields (a wrong type
is a 400, as at OpenAI: `max_tokens: "5"`, `max_tokens: true` and `stream: "yes"` are refused; a bool is not an
int), `parse`, which turns a body's bytes into one, and `prepare_chat` / `prepare_completion`, which turn that into
engine `Request`s, one per choice (the chat template and the tokenizer run here). The HTTP side runs both off the
event loop: a 2 MB body costs the loop nothing."""

import json
import secrets
from typing import Literal, Optional, Union

from obliviate.engine.sampling import Sampling
from obliviate.serve.engine import ApiError, Engine, Request, chat_ids, continues, text_ids

MAX_STOPS, MAX_STOP_CHARS, MAX_TOP = 16, 256, 20


def _common():
    """The fields both endpoints take (pydantic is imported here: `obliviate serve --help` stays fast)."""
    from pydantic import BaseModel, ConfigDict, Field

    strict = ConfigDict(strict=True, extra="allow")  # other OpenAI fields are accepted and ignored

    class StreamOptions(BaseModel):
        model_config = strict
        include_usage: Optional[bool] = None

    class Common(BaseModel):
        model_config = strict
        model: str
        max_tokens: Optional[int] = Field(None, ge=1)
        n: Optional[int] = Field(None, ge=1, le=128)
        stream: Optional[bool] = False
        stream_options: Optional[StreamOptions] = None
        stop: Union[str, list[str], None] = None
        temperature: Optional[float] = Field(None, ge=0, le=2)  # unset or 0: greedy
        top_p: Optional[float] = Field(None, gt=0, le=1)
        seed: Optional[int] = None
        presence_penalty: Optional[float] = Field(None, ge=-2, le=2)  # checked, then ignored
        frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
        user: Optional[str] = None
        ignore_eos: Optional[bool] = None  # vLLM's: decode to max_tokens (benchmarks)

    return strict, Common


def chat_request_model():
    """The ChatRequest pydantic model."""
    from pydantic import BaseModel, Field

    strict, Common = _common()

    class Part(BaseModel):
        model_config = strict
        type: Literal["text"]
        text: str

    class Message(BaseModel):
        model_config = strict
        role: Literal["system", "developer", "user", "assistant"]
        content: Union[str, list[Part], None] = None
        name: Optional[str] = None

    class ChatRequest(Common):
        messages: list[Message] = Field(min_length=1)
        max_completion_tokens: Optional[int] = Field(None, ge=1)
        tools: Optional[list] = None
        logprobs: Optional[bool] = None
        top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP)
        add_generation_prompt: Optional[bool] = None  # vLLM's chat-template fields
        continue_final_message: Optional[bool] = None

    return ChatRequest


def completion_request_model():
    """The CompletionRequest pydantic model (the legacy `/v1/completions`: raw text in, no chat template)."""
    from pydantic import Field

    _, Common = _common()

    class CompletionRequest(Common):
        prompt: Union[str, list[str]]
        logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP)
        echo: Optional[bool] = None
        best_of: Optional[int] = None
        suffix: Optional[str] = None
        add_special_tokens: Optional[bool] = None  # vLLM's: the tokenizer's BOS etc. (default: added)

    return CompletionRequest


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


def unsupported(key: str, why: str) -> ApiError:
    return ApiError(400, f"{key} is not supported: {why}", param=key, code="unsupported_parameter")


def _checked(engine: Engine, body, prompts: int) -> tuple:
    """(choices per prompt, stop strings) after the checks both endpoints share."""
    if body.model != engine.name:
        raise ApiError(
            400,
            f"model {body.model!r} is not served here; this server serves {engine.name!r} (see GET /v1/models)",
            param="model",
            code="model_not_found",
        )
    n = body.n or 1
    if n * prompts > engine.max_queue:
        raise ApiError(
            400,
            f"n: {n * prompts} replies in one request is more than this server queues ({engine.max_queue}, "
            "--max-queue)",
            param="n",
        )
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stop) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stop):
        raise ApiError(400, f"stop: at most {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} characters each", param="stop")
    return n, stop


def _budget(engine: Engine, prompt: list[int], asked: Optional[int], default: Optional[int], param: str) -> int:
    room = (engine.context - len(prompt)) if engine.context else None
    if room is not None and (room < 1 or (asked or 0) > room):
        raise ApiError(
            400,
            f"this model's context length is {engine.context} tokens; the {param} take "
            f"{len(prompt)} and max_tokens asks {asked or 1} more",
            param=param,
            code="context_length_exceeded",
        )
    budget = asked or default or room or 512
    return min(budget, room) if room is not None else budget


def _choices(body, prompt, text, budget, stop, n, first, **kw) -> list[Request]:
    """The n choices of one prompt, indices first..first+n-1, each with its own seed (seed + its index)."""
    sampled = bool(body.temperature)
    seed = body.seed if body.seed is not None else secrets.randbits(63)
    return [
        Request(
            prompt,
            text,
            budget,
            stream=bool(body.stream),
            index=first + j,
            sampling=Sampling(body.temperature, body.top_p or 1.0, seed=(seed + first + j) % 2**63)
            if sampled
            else None,
            stop=stop,
            ignore_eos=bool(body.ignore_eos),
            **kw,
        )
        for j in range(n)
    ]


def prepare_chat(engine: Engine, body) -> list[Request]:
    """A validated ChatRequest -> its unadmitted Requests (one per choice), or ApiError(400) naming the problem."""
    n, stop = _checked(engine, body, 1)
    if body.tools:
        raise unsupported("tools", "this server decodes text replies only")
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    messages = [
        {
            "role": "system" if m.role == "developer" else m.role,  # OpenAI's newer name for system
            "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content or []),
        }
        for m in body.messages
    ]
    if all(m["role"] != "user" for m in messages):
        raise ApiError(400, "messages must contain a user message", param="messages")
    flags = {
        k: v
        for k, v in (
            ("add_generation_prompt", body.add_generation_prompt),
            ("continue_final_message", body.continue_final_message),
        )
        if v is not None
    }
    prompt = chat_ids(engine.tok, messages, engine.context, **flags)  # only the flags set: a template's own defaults
    text = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    budget = _budget(engine, prompt, body.max_completion_tokens or body.max_tokens, None, "messages")
    prefill = continues(messages, body.add_generation_prompt, body.continue_final_message)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return _choices(body, prompt, text, budget, stop, n, 0, prefill=prefill, logprobs=logprobs)


def prepare_completion(engine: Engine, body) -> list[Request]:
    """A validated CompletionRequest -> its unadmitted Requests (n per prompt, prompt-major, as OpenAI numbers
    them), or ApiError(400). The prompt is tokenised as it is, with the tokenizer's special tokens (BOS) unless
    `add_special_tokens` is false; the default budget is 16 tokens, as OpenAI's."""
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise ApiError(400, "prompt: give a text, or a list of texts", param="prompt")
    n, stop = _checked(engine, body, len(prompts))
    if body.echo:
        raise unsupported("echo", "the reply is the continuation only")
    if body.suffix:
        raise unsupported("suffix", "this server continues text at its end only")
    if body.best_of not in (None, n):
        raise unsupported("best_of", "each choice is one reply (best_of must equal n)")
    reqs = []
    for i, text in enumerate(prompts):
        add = body.add_special_tokens is not False
        prompt = text_ids(engine.tok, text, engine.context, "prompt", add_special_tokens=add)
        if not prompt:
            raise ApiError(400, "prompt: an empty prompt gives the model nothing to continue", param="prompt")
        budget = _budget(engine, prompt, body.max_tokens, 16, "prompt")
        reqs += _choices(body, prompt, text, budget, stop, n, i * n, raw=True, logprobs=body.logprobs)
    return reqs


prepare = prepare_chat  # the name before /v1/completions
