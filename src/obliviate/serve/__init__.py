"""An OpenAI-compatible chat server over the one decode loop (`obliviate.engine.generation.decode`), guards applied.

It speaks the part of OpenAI's Chat Completions API (https://platform.openai.com/docs/api-reference/chat) that a
greedy, guarded decoder can honour: `POST /v1/chat/completions` (a `chat.completion` object, or server-sent
`chat.completion.chunk` events ending with `data: [DONE]`), `GET /v1/models`, `GET /health`. Decoding is greedy,
as in the audits, so a guard's verdict is reproducible: sampling fields (`temperature`, `top_p`, `seed`...) are
accepted and ignored. `finish_reason` is "stop" (EOS), "length" (`max_tokens` / `max_completion_tokens`; default:
the rest of the context) or "content_filter" (a guard halted the reply; its content is the guard's refusal). A
trailing assistant message is a prefill (`continue_final_message=True`); the reply is only the continuation, with
its leading space (prefill + content reads as the model wrote it).
Errors have OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: 400 bad input (FastAPI's 422
included, and any field of the wrong type: the model is strict), 401 missing or wrong key, 408 a body slower than
`read_timeout`, 413 a body over `max_body` (before it is read), 421 a `Host` not allowed (DNS rebinding), 429 when
`max_queue` requests are already queued or decoding, 500 "internal error" for a request that failed inside the
server (its cause goes to the `obliviate.serve` log, never to a client), 503 once the worker thread has died
(`/health` too). See `obliviate.serve.protect` for the checks made before a route runs.

Batching. One worker thread owns the model (one decode over a batch costs little more than one row). It takes the
first queued request, waits up to `batch_window_ms` for more (up to `max_batch`), runs one `decode` with the
batch's largest `max_tokens`, and hands tokens and results to the asyncio loop (`loop.call_soon_threadsafe`). A
row that reaches its own `max_tokens` is cut there (greedy: the same prefix as a shorter run) and answered at
once; an internal guard halts it, and the rows of clients that disconnected, at the next token. If a batch's
decode raises (a guard, the model), its unfinished requests are decoded again one by one, so only the request that
causes the failure gets the 500.

Streaming. Without guards that watch the reply grow, text streams token by token: the tokens so far are decoded
again and the difference is sent, so multi-byte characters come out whole and the deltas add up to the
non-streamed `content` (`.strip()` included). With `on_step` guards (every k tokens) text is released only once
the next check has passed it, so a halted reply never streams what the guard stopped: the refusal follows what
had passed, with finish_reason "content_filter". With `on_finish` guards the whole reply is held to the end.
"""

from obliviate.serve.engine import ApiError, Engine, Request, chat_ids  # noqa: F401
from obliviate.serve.http import create_app  # noqa: F401
from obliviate.serve.protect import Limits  # noqa: F401
from obliviate.serve.server import background_server, bind, is_loopback, uvicorn_server  # noqa: F401
