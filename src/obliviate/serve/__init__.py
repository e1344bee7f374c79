"""An OpenAI-compatible server over the decode loop of `obliviate.engine.generation`, guards applied.

It speaks the part of OpenAI's API (https://platform.openai.com/docs/api-reference) that black-box tools use:
`POST /v1/chat/completions` (a `chat.completion`, or server-sent `chat.completion.chunk` events ending with
`data: [DONE]`), `POST /v1/completions` (legacy text completion: the prompt is tokenised as it is, no chat
template), `GET /v1/models`, `GET /health`. Fields: `max_tokens` / `max_completion_tokens` (default: the rest of
the context; 16 for /v1/completions, as OpenAI's), `temperature` (unset or 0: greedy, as the audits decode;
OpenAI's default would be 1), `top_p`, `seed` (each choice draws from its own generator, seeded with seed + its
index: the same seed gives the same replies whatever else is in the batch), `n`, `stop` (the reply ends before the
first stop string, finish_reason "stop"), chat `logprobs` / `top_logprobs` and completions `logprobs` (an int) in
OpenAI's shapes (the log-probabilities of the distribution the guards leave, before temperature and top_p; a
token a guard ruled out gets -9999.0), and vLLM's `add_generation_prompt`, `continue_final_message` and
`ignore_eos`. `finish_reason` is "stop" (EOS or a stop string), "length" or "content_filter" (a guard halted the
reply; its content is the guard's refusal, with no log-probabilities). A trailing assistant message is continued
(a prefill) unless `add_generation_prompt` is true or `continue_final_message` false; the reply is only the
continuation, with its leading space (prefill + content reads as the model wrote it).
Errors have OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: 400 bad input (FastAPI's 422
included, and any field of the wrong type: the model is strict; `tools`, `echo`, `suffix` are refused), 401
missing or wrong key, 408 a body slower than `read_timeout`, 413 a body over `max_body` (before it is read), 421 a
`Host` not allowed (DNS rebinding), 429 when `max_queue` replies are already queued or decoding, 500 "internal
error" for a request that failed inside the server (its cause goes to the `obliviate.serve` log, never to a
client), 503 once the worker thread has died (`/health` too). See `obliviate.serve.protect` for the checks made
before a route runs.

Batching. One worker thread owns the model and decodes one running batch (`obliviate.serve.batch`), one token per
step for every row; each choice of a response is a row. Continuous batching (the default): a request that arrives
while the batch runs joins it at the next step, and a row that is done leaves at once. Static batching
(`batching="static"`, and models whose cache cannot take rows mid-batch): the worker takes the first queued
request, waits up to `batch_window_ms` for more (up to `max_batch`), and decodes them until the last is done;
requests that arrive meanwhile wait. Tokens and results go to the asyncio loop through `loop.call_soon_threadsafe`.
A guard halts its row at its next check, and the rows of clients that disconnected leave at the next token. If a
step raises (a guard, the model), the batch's unfinished requests are decoded again one by one, so only the request
that causes the failure gets the 500.

Streaming. Without guards that watch the reply grow, text streams token by token: the tokens so far are decoded
again and the difference is sent, so multi-byte characters come out whole and the deltas add up to the
non-streamed `content` (`.strip()` included, for chat), and text that may be the start of a stop string is held
until the next token decides. With `on_step` guards (every k tokens) text is released only once the next check has
passed it, so a halted reply never streams what the guard stopped: the refusal follows what had passed, with
finish_reason "content_filter". With `on_finish` guards the whole reply is held to the end. Log-probabilities travel
with the text of their tokens, so a stream's add up to the non-streamed list.
"""

from obliviate.serve.batch import mergeable  # noqa: F401
from obliviate.serve.engine import ApiError, Engine, Request, chat_ids  # noqa: F401
from obliviate.serve.http import create_app  # noqa: F401
from obliviate.serve.protect import Limits  # noqa: F401
from obliviate.serve.server import background_server, bind, is_loopback, uvicorn_server  # noqa: F401
