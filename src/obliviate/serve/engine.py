"""The serving engine: one worker thread owns the model and micro-batches queued chat requests through the
decode loop (see the package docstring for batching and streaming)."""

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from obliviate.engine.hooks import Guard, overrides
from obliviate.models.anatomy import text_config
from obliviate.models.encode import chat_text, prompt_text, stop_ids

CANCELLED = "cancelled"  # the internal guard's name: rows it halts were cancelled or already served
log = logging.getLogger("obliviate.serve")
HEAD_CHARS_PER_TOKEN = 64  # chat_ids: the characters per context token tokenised before a prompt is refused as long


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


def chat_ids(tok, messages: list[dict], context: int | None = None) -> list[int]:
    """Messages -> prompt ids through the tokenizer's chat template, as `models.encode.prompt_ids` does for one
    question (template as text, then tokenised without added specials). A trailing assistant message is
    continued (prefill) instead of opening a new assistant turn. With `context` (the model's length in tokens), a
    text far too long for it is refused from its head alone, so a large body costs what the context costs."""
    prefill = messages[-1]["role"] == "assistant"
    try:
        text = (
            chat_text(tok, messages, continue_final_message=True)
            if prefill  # the prefix is rendered
            else prompt_text(tok, messages)
        )
    except Exception as e:  # a template that rejects the conversation (e.g. roles that must alternate)
        raise ApiError(400, f"the model's chat template rejects these messages: {e}", param="messages") from None
    head = HEAD_CHARS_PER_TOKEN * context if context else None
    if head and len(text) > head and len(tok(text[:head], add_special_tokens=False)["input_ids"]) > 2 * context:
        # a head of the text already takes twice the context (no tokenizer has 64-character tokens on average)
        raise ApiError(
            400,
            f"this model's context length is {context} tokens; the messages take far more (the "
            f"first {head} characters alone take over {2 * context})",
            param="messages",
            code="context_length_exceeded",
        )
    return tok(text, add_special_tokens=False)["input_ids"]


@dataclass(eq=False)
class Request:
    """One admitted chat request. The worker thread writes tokens/sent/finished; the event loop reads events."""

    prompt: list[int]
    text: Optional[str]  # the last user message: what guards' on_request reads
    max_tokens: int
    stream: bool = False
    prefill: bool = False  # the messages end with the assistant's: the reply continues it, its leading space kept
    loop: Any = None
    events: Any = None  # asyncio.Queue of ("delta", str) | ("done", dict) | ("error", ApiError)
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


class Engine:
    """The model, its guards, the admission queue and the one worker thread that decodes micro-batches."""

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
    ):
        from obliviate.engine.hooks import attached

        # guards=None: those attached to the model (obliviate.engine.hooks.attach), as decode() itself does
        self.guards = attached(model) if guards is None else list(guards)
        self.model, self.tok, self.name = model, tok, name
        self.max_batch, self.max_queue, self.window = max_batch, max_queue, batch_window_ms / 1000
        cfg = text_config(model)
        self.context = getattr(cfg, "max_position_embeddings", None)
        self.eos = stop_ids(tok, model)
        self.hold_all = any(overrides(g, "on_finish") for g in self.guards)
        self.checks = [g.every for g in self.guards if overrides(g, "on_step") and getattr(g, "every", 0) > 0]
        self.queue: collections.deque[Request] = collections.deque()
        self.cond = threading.Condition(threading.RLock())
        self.admitted = 0  # queued + decoding: what max_queue bounds
        self.cancelled_total = 0
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)
        self._stop, self._thread, self.dead = False, None, False

    # --- admission (event-loop side) ---
    def check_room(self) -> None:
        """ApiError 503 if the worker has died, 429 if `max_queue` requests are queued or decoding."""
        with self.cond:
            if not self.alive():
                raise worker_dead()
            if self.admitted >= self.max_queue:
                raise ApiError(
                    429,
                    f"the server is busy ({self.max_queue} requests queued or decoding); retry",
                    type="rate_limit_error",
                    code="queue_full",
                )

    def submit(self, req: Request) -> None:
        with self.cond:
            self.check_room()  # again: others may have been admitted while this one was tokenised
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
        batch: list[Request] = []
        try:
            while True:
                batch = self._next_batch()
                if not batch:
                    return
                try:
                    self._run_isolated(batch)
                finally:
                    for req in batch:
                        self.release(req)
        except BaseException:  # whatever ends the worker, nobody may be left waiting on it
            log.critical(
                "the decode worker stopped; every request now gets 503 until the server restarts", exc_info=True
            )
            with self.cond:
                self.dead = True
                waiting = [*batch, *self.queue]
                self.queue.clear()
            for req in waiting:
                self._fail(req, worker_dead())

    def _run_isolated(self, batch: list[Request]) -> None:
        """Decode the batch; if that raises (a guard, the model), decode its unfinished requests one by one, so the
        failure reaches only the request that causes it. Greedy decoding gives each row the same tokens alone."""
        try:
            return self._run(batch)
        except Exception:
            if len(batch) == 1:
                return self._failed(batch[0])
            left = [r for r in batch if not r.finished and not r.cancelled]
            log.warning(
                "a batch of %d requests failed; decoding its %d unfinished ones one by one",
                len(batch),
                len(left),
                exc_info=True,
            )
        for req in left:
            req.tokens = []  # what was streamed stays sent: the same greedy tokens come again
            try:
                self._run([req])
            except Exception:
                self._failed(req)

    def _failed(self, req: Request) -> None:
        log.error("a request failed in the decode worker (%d prompt tokens)", len(req.prompt), exc_info=True)
        self._fail(req, internal_error())

    def _fail(self, req: Request, error: ApiError) -> None:
        if not req.finished and not req.cancelled:
            req.finished = True
            req.post("error", error)
        self.release(req)

    def _run(self, batch: list[Request]) -> None:
        from obliviate.engine.generation import decode

        self.batch_sizes.append(len(batch))
        release = _Release(engine=self, batch=batch)
        replies = decode(
            self.model,
            self.tok,
            [r.prompt for r in batch],
            texts=[r.text for r in batch],
            guards=[*self.guards, release],
            max_new_tokens=max(r.max_tokens for r in batch),
            batch_size=len(batch),
            on_token=lambda i, t: self._on_token(batch[i], t),
        )
        for req, rep in zip(batch, replies):
            if not req.finished and not req.cancelled:
                try:  # an on_finish guard that raises on one reply fails that request alone
                    self._settle(req, rep)
                except Exception:
                    self._failed(req)

    def _on_token(self, req: Request, token: int) -> None:
        if req.finished or req.cancelled or len(req.tokens) >= req.max_tokens:
            return
        req.tokens.append(token)
        n = len(req.tokens)
        if not self.hold_all and (token in self.eos or n == req.max_tokens):
            # every check before this token has passed, and none runs after the last one: the reply is final
            self._finish(req, self._text(req, req.tokens), "stop" if token in self.eos else "length")
        elif req.stream and not self.hold_all:
            # checks at token counts <= n - 1 have run; release text only up to the last one every guard made
            safe = min([(n - 1) // k * k for k in self.checks], default=n)
            self._push(req, self._text(req, req.tokens[:safe], partial=True))

    def _settle(self, req: Request, rep) -> None:
        """The decode result for a row that was not finished token by token (hold_all, or a guard halted it)."""
        n, m = len(req.tokens), req.max_tokens
        if rep.halted_by is None and len(rep.token_ids) <= m:
            self._finish(req, self._text(req, rep.token_ids), rep.finish_reason)
        elif rep.halted_by not in (None, CANCELLED) and n < m:  # halted within this request's own budget
            self._finish(req, rep.text, "content_filter")
        else:  # cut to max_tokens; on_finish guards judge the text this request would have got on its own
            from obliviate.engine.generation import Row

            text = self._text(req, req.tokens[:m])
            reason = "stop" if req.tokens and req.tokens[-1] in self.eos else "length"
            row = Row(index=0, text=req.text, scores=dict(rep.scores))
            for g in self.guards:
                if overrides(g, "on_finish") and row.halted_by is None:
                    g.on_finish(text, row)
            if row.halted_by is not None:
                text, reason = row.refusal or "", "content_filter"
            self._finish(req, text, reason)

    def _text(self, req: Request, tokens: list[int], partial: bool = False) -> str:
        if req.prefill:
            # a continuation keeps its leading space ("He was born in" + " Paris"). Decoded after the prompt's last
            # token: SentencePiece-style tokenizers drop the leading space of a sequence's first token
            head = self.tok.decode(req.prompt[-1:], skip_special_tokens=True)
            text = self.tok.decode(req.prompt[-1:] + tokens, skip_special_tokens=True)
            text = text[len(head) :] if text.startswith(head) else text
        else:
            text = self.tok.decode(tokens, skip_special_tokens=True).lstrip()
        # a partial text may end inside a multi-byte character, and its trailing space may be stripped later
        return text.rstrip("\ufffd").rstrip() if partial else text.rstrip()

    def _push(self, req: Request, text: str) -> None:
        if len(text) > len(req.sent) and text.startswith(req.sent):
            req.post("delta", text[len(req.sent) :])
            req.sent = text

    def _finish(self, req: Request, text: str, reason: str) -> None:
        req.finished = True
        if req.stream and reason == "content_filter" and text:
            req.post("delta", text)  # the refusal, after whatever text had passed the checks
        elif req.stream:
            self._push(req, text)
        req.post(
            "done",
            {"content": text, "finish_reason": reason, "completion_tokens": min(len(req.tokens), req.max_tokens)},
        )
        self.release(req)
