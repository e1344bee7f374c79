"""The serving engine: admission, the one worker thread that owns the model, and what each token means for its
request (stop strings, what a stream may release, log-probabilities). The running batch is `obliviate.serve.batch`;
see the package docstring for batching and streaming."""

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from obliviate.engine.hooks import overrides
from obliviate.engine.sampling import Sampling
from obliviate.models.anatomy import text_config
from obliviate.models.encode import chat_text, prompt_text, stop_ids
from obliviate.serve.batch import Batch, mergeable
from obliviate.serve.replies import Replies

log = logging.getLogger("obliviate.serve")
HEAD_CHARS_PER_TOKEN = 64  # chat_ids: the characters per context token tokenised before a prompt is refused as long
BATCHING = ("continuous", "static")


class ApiError(Exception):
    """An error the client sees, in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": type, "param": param, "code": code}}


def internal_error() -> ApiError:
    """What a client sees when its request failed inside the server: nothing of the cause (that goes to the log)."""
    return ApiError(
        500, "internal error: the server could not complete this request", type="server_error", code="internal_error"
    )


def worker_dead() -> ApiError:
    return ApiError(
        503,
        "the server's decode worker has stopped; the server must be restarted",
        type="server_error",
        code="worker_dead",
    )


def continues(messages: list[dict], add_generation_prompt=None, continue_final_message=None) -> bool:
    """Whether the reply continues the last message (a prefill), from vLLM's chat fields. Unset, a trailing
    assistant message is continued unless `add_generation_prompt` is true (then its turn is closed and a new one
    opens). `continue_final_message` true needs a trailing assistant message and no `add_generation_prompt`."""
    last = messages[-1]["role"] == "assistant"
    if continue_final_message is None:
        return last and add_generation_prompt is not True
    if continue_final_message and not last:
        raise ApiError(
            400,
            "continue_final_message: the messages must end with the assistant message to continue",
            param="continue_final_message",
        )
    if continue_final_message and add_generation_prompt:
        raise ApiError(
            400, "continue_final_message and add_generation_prompt cannot both be true", param="add_generation_prompt"
        )
    return bool(continue_final_message)


def chat_ids(
    tok, messages: list[dict], context: int | None = None, *, add_generation_prompt=None, continue_final_message=None
) -> list[int]:
    """Messages -> prompt ids through the tokenizer's chat template, as `models.encode.prompt_ids` does for one
    question (template as text, then tokenised without added specials). A continued message (`continues`) is
    rendered open, so the reply follows its text; otherwise a new assistant turn opens unless
    `add_generation_prompt` is false. With `context` (the model's length in tokens), a text far too long for it is
    refused from its head alone, so a large body costs what the context costs."""
    prefill = continues(messages, add_generation_prompt, continue_final_message)
    opens = add_generation_prompt if add_generation_prompt is not None else not prefill
    try:
        if prefill:
            text = chat_text(tok, messages, continue_final_message=True)
        else:
            text = prompt_text(tok, messages) if opens else chat_text(tok, messages)
    except Exception as e:  # a template that rejects the conversation (e.g. roles that must alternate)
        raise ApiError(400, f"the model's chat template rejects these messages: {e}", param="messages") from None
    return text_ids(tok, text, context, param="messages")


def text_ids(tok, text: str, context: int | None, param: str, add_special_tokens: bool = False) -> list[int]:
    """A prompt's text -> ids; a text whose head alone takes twice the context is refused before the rest is read."""
    head = HEAD_CHARS_PER_TOKEN * context if context else None
    if head and len(text) > head and len(tok(text[:head], add_special_tokens=False)["input_ids"]) > 2 * context:
        # a head of the text already takes twice the context (no tokenizer has 64-character tokens on average)
        raise ApiError(
            400,
            f"this model's context length is {context} tokens; the {param} take far more (the "
            f"first {head} characters alone take over {2 * context})",
            param=param,
            code="context_length_exceeded",
        )
    return tok(text, add_special_tokens=add_special_tokens)["input_ids"]


@dataclass(eq=False)
class Request:
    """One reply being made (one choice of a response). The worker thread writes tokens/sent/finished; the event
    loop reads events: ("delta", index, (text, logprob entries)) | ("done", index, dict) | ("error", index,
    ApiError)."""

    prompt: list[int]
    text: Optional[str]  # what guards' on_request reads: the last user message, or a completion's prompt
    max_tokens: int
    stream: bool = False
    prefill: bool = False  # the reply continues the last message: its leading space kept
    raw: bool = False  # /v1/completions: the continuation exactly as decoded, its spaces kept
    index: int = 0  # the choice's index in its response
    sampling: Optional[Sampling] = None  # None: greedy
    stop: tuple = ()  # stop strings: the reply ends before the first one
    logprobs: Optional[int] = None  # None: none; k: each token's log-probability and the k most likely
    ignore_eos: bool = False  # vLLM's benchmarking field: decode to max_tokens
    loop: Any = None
    events: Any = None  # an asyncio.Queue, shared by the choices of one response
    tokens: list[int] = field(default_factory=list)
    entries: list = field(default_factory=list)  # per token, when logprobs: (id, logprob, [(id, logprob)...])
    ends: list[int] = field(default_factory=list)  # per token, when logprobs: where its text ends in the reply
    sent: str = ""
    sent_entries: int = 0
    finished: bool = False
    cancelled: bool = False
    released: bool = False

    def post(self, kind: str, value) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, self.index, value))
        except RuntimeError:  # the loop is closed (shutdown): nobody is listening any more
            pass

    def restart(self) -> None:
        """Decode again from the prompt (what was streamed stays sent: the same tokens come again)."""
        self.tokens, self.entries, self.ends = [], [], []


class Engine(Replies):
    """The model, its guards, the admission queue and the one worker thread that decodes the running batch.

    batching "continuous": a queued request joins the running batch at the next decode step (`mergeable` models;
    others fall back to static). "static": a batch is formed while the worker is idle and runs until its last row
    is done; requests that arrive meanwhile wait for the next one."""

    def __init__(
        self,
        model,
        tok,
        guards=None,
        *,
        name: str = "model",
        max_batch: int = 16,
        max_queue: int = 64,
        batch_window_ms: float = 10.0,
        batching: str = "continuous",
    ):
        from obliviate.engine.hooks import attached

        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
        # guards=None: those attached to the model (obliviate.engine.hooks.attach), as decode() itself does
        self.guards = attached(model) if guards is None else list(guards)
        self.model, self.tok, self.name = model, tok, name
        self.max_batch, self.max_queue, self.window = max_batch, max_queue, batch_window_ms / 1000
        if batching == "continuous" and not mergeable(model):
            log.warning("this model's cache layers cannot take rows mid-batch: static batching")
            batching = "static"
        self.batching = batching
        cfg = text_config(model)
        self.context = getattr(cfg, "max_position_embeddings", None)
        self.eos = stop_ids(tok, model)
        self.finishing = [g for g in self.guards if overrides(g, "on_finish")]
        self.hold_all = bool(self.finishing)
        self.checks = [g.every for g in self.guards if overrides(g, "on_step") and getattr(g, "every", 0) > 0]
        self.queue: collections.deque[Request] = collections.deque()
        self.cond = threading.Condition(threading.RLock())
        self.admitted = 0  # queued + decoding: what max_queue bounds
        self.cancelled_total = 0
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)  # rows admitted together
        self.step_rows: collections.deque[int] = collections.deque(maxlen=100_000)  # rows in each decode step
        self._stop, self._thread, self.dead = False, None, False

    # --- admission (event-loop side) ---
    def check_room(self, rows: int = 1) -> None:
        """ApiError 503 if the worker has died, 429 if `rows` more would pass `max_queue` queued or decoding."""
        with self.cond:
            if not self.alive():
                raise worker_dead()
            if self.admitted + rows > self.max_queue:
                raise ApiError(
                    429,
                    f"the server is busy ({self.max_queue} requests queued or decoding); retry",
                    type="rate_limit_error",
                    code="queue_full",
                )

    def submit(self, reqs) -> None:
        """Queue a request, or the choices of one response (all or none)."""
        reqs = [reqs] if isinstance(reqs, Request) else list(reqs)
        with self.cond:
            self.check_room(len(reqs))  # again: others may have been admitted while these were tokenised
            self.admitted += len(reqs)
            self.queue.extend(reqs)
            self.cond.notify()

    def cancel(self, req: Request) -> None:
        """The client went away: drop a queued request now; a decoding row leaves at its next token."""
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

    def alive(self) -> bool:
        """Whether the worker thread runs (once started): /health answers 503 and requests fail fast otherwise."""
        return not self.dead and (self._thread is None or self._thread.is_alive())

    # --- the worker thread ---
    def start(self) -> None:
        self._stop, self.dead = False, False
        self._thread = threading.Thread(target=self._work, name="obliviate-decode", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _next_batch(self) -> list[Request]:
        """While idle: wait for a request, then up to the window for more (up to max_batch)."""
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

    def _take(self, room: int) -> list[Request]:
        """While decoding (continuous): what is queued now, up to `room` rows; never waits."""
        with self.cond:
            return [self.queue.popleft() for _ in range(min(room, len(self.queue)))]

    def _batch(self) -> Batch:
        return Batch(self.model, self.tok, self.guards, self._on_token, self._on_halt, self.release)

    def _work(self) -> None:
        live, group = None, []
        try:
            while True:
                if live is None or not len(live):
                    group = self._next_batch()
                    if not group:
                        return
                    live = self._guarded(self._batch(), group)
                elif self.batching == "continuous" and self.queue and len(live) < self.max_batch and not self._stop:
                    group = self._take(self.max_batch - len(live))
                    live = self._guarded(live, group)
                group = []
                if live is not None and len(live):
                    self.step_rows.append(len(live))
                    live = self._guarded(live)
        except BaseException:  # whatever ends the worker, nobody may be left waiting on it
            log.critical(
                "the decode worker stopped; every request now gets 503 until the server restarts", exc_info=True
            )
            with self.cond:
                self.dead = True
                waiting = [*(live.requests() if live is not None else []), *group, *self.queue]
                self.queue.clear()
            for req in waiting:
                self._fail(req, worker_dead())

    def _guarded(self, live: Batch, group: Optional[list] = None) -> Optional[Batch]:
        """Admit `group` into the batch, or (no group) decode one step. If that raises (a guard, the model), the
        batch is given up and its unfinished requests are decoded again one by one, so the failure reaches only
        the request that causes it. Returns the batch, or None once it is given up."""
        if group:
            self.batch_sizes.append(len(group))
        try:
            live.admit(group) if group else live.step()
            return live
        except Exception:
            involved = list(dict.fromkeys([*live.requests(), *(group or [])]))
        left = [r for r in involved if not r.finished and not r.cancelled]
        for req in involved:
            if req.cancelled:
                self.release(req)
        if len(involved) == 1:
            for req in left:
                self._failed(req)
            return None
        log.warning(
            "a batch of %d requests failed; decoding its %d unfinished ones one by one",
            len(involved),
            len(left),
            exc_info=True,
        )
        for req in left:
            req.restart()
            self.batch_sizes.append(1)
            try:
                alone = self._batch()
                alone.admit([req])
                while len(alone):
                    alone.step()
            except Exception:
                self._failed(req)
        return None

    def _failed(self, req: Request) -> None:
        log.error("a request failed in the decode worker (%d prompt tokens)", len(req.prompt), exc_info=True)
        self._fail(req, internal_error())

    def _fail(self, req: Request, error: ApiError) -> None:
        if not req.finished and not req.cancelled:
            req.finished = True
            req.post("error", error)
        self.release(req)
