"""What each token means for its request (the engine's worker side): when a reply is complete (EOS, `max_tokens`,
a stop string), what a stream may release so far (up to the last guard check, and short of a possible stop
string), the last word of `on_finish` guards, and the log-probabilities that travel with the text."""

from typing import Optional


def first_stop(text: str, stops) -> int | None:
    """Where the first of the stop strings begins in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def held(text: str, stops) -> str:
    """`text` without an ending that could be the start of a stop string (a stream may not release it yet)."""
    for k in range(max(0, len(text) - max(map(len, stops), default=0) + 1), len(text)):
        if any(s.startswith(text[k:]) for s in stops):
            return text[:k]
    return text


class Replies:
    """A mixin of `obliviate.serve.engine.Engine`: it reads the engine's tok, eos, checks, hold_all, finishing,
    release and _failed."""

    def _on_token(self, req, row, token: int, entry) -> bool:
        """Take a row's next token; True once its reply is complete (then it has been answered)."""
        if req.finished or req.cancelled:
            self.release(req)
            return True
        req.tokens.append(token)
        if entry is not None:
            req.entries.append(self._entry(req, entry))
        n, eos = len(req.tokens), token in self.eos and not req.ignore_eos
        text = self._decoded(req, req.tokens) if (req.stream or req.stop or req.logprobs is not None) else None
        if req.logprobs is not None:
            req.ends.append(len(text))
        cut = first_stop(text, req.stop) if req.stop and not eos else None
        if eos or cut is not None or n >= req.max_tokens:
            if cut is not None:  # the tokens with text before the stop string
                kept = sum(1 for i in range(n) if (req.ends[i - 1] if i else 0) < cut) if req.ends else 0
                final = text[:cut]
            else:
                kept, final = n - eos, text if text is not None else self._decoded(req, req.tokens)
            self._complete(req, row, self._shown(req, final), "stop" if eos or cut is not None else "length", kept)
            return True
        if req.stream and not self.hold_all:
            # checks at token counts <= n - 1 have run; release text only up to the last one every guard made
            safe = min([(n - 1) // k * k for k in self.checks], default=n)
            part = text if safe == n else self._decoded(req, req.tokens[:safe])
            self._push(req, self._shown(req, held(part, req.stop), partial=True))
        return False

    def _entry(self, req, entry) -> tuple:
        """(id, logprob, [(id, logprob)...]) -> (text, logprob, [(text, logprob)...]), each token's text as it reads
        after the reply's previous token; a token the guards ruled out (-inf) gets -9999.0, as OpenAI writes it."""
        prev = (req.tokens[-2:-1] or req.prompt[-1:])[0]
        head = self.tok.decode([prev])

        def piece(t: int) -> str:
            both = self.tok.decode([prev, t])
            return both[len(head) :] if both.startswith(head) else self.tok.decode([t])

        token, lp, alts = entry
        return piece(token), max(lp, -9999.0), [(piece(t), max(a, -9999.0)) for t, a in alts]

    def _on_halt(self, req, row) -> None:
        if req.finished or req.cancelled:
            return self.release(req)
        self._finish(req, row.refusal or "", "content_filter", 0)

    def _complete(self, req, row, text: str, reason: str, kept: int) -> None:
        """A reply the model finished: on_finish guards have the last word (one that raises fails this request)."""
        try:
            for g in self.finishing:
                if row.halted_by is None:
                    g.on_finish(text.strip(), row)
        except Exception:
            return self._failed(req)
        if row.halted_by is not None:
            return self._finish(req, row.refusal or "", "content_filter", 0)
        self._finish(req, text, reason, kept)

    def _decoded(self, req, tokens: list[int]) -> str:
        """The reply's text so far, before its end is trimmed."""
        if req.prefill or req.raw:
            # a continuation keeps its leading space ("He was born in" + " Paris"). Decoded after the prompt's last
            # token: SentencePiece-style tokenizers drop the leading space of a sequence's first token
            head = self.tok.decode(req.prompt[-1:], skip_special_tokens=True)
            text = self.tok.decode(req.prompt[-1:] + tokens, skip_special_tokens=True)
            return text[len(head) :] if text.startswith(head) else text
        return self.tok.decode(tokens, skip_special_tokens=True).lstrip()

    @staticmethod
    def _shown(req, text: str, partial: bool = False) -> str:
        # a partial text may end inside a multi-byte character, and a chat reply's trailing space is stripped later
        text = text.rstrip("\ufffd") if partial else text
        return text if req.raw else text.rstrip()

    def _push(self, req, text: str, kept: Optional[int] = None) -> None:
        """Stream `text` past what was sent, with the log-probabilities of the tokens it completes."""
        if len(text) > len(req.sent) and text.startswith(req.sent):
            upto = sum(1 for e in req.ends if e <= len(text))
            upto = min(upto, len(req.entries) if kept is None else kept)
            entries = req.entries[req.sent_entries : upto]
            req.sent_entries = max(req.sent_entries, upto)
            req.post("delta", (text[len(req.sent) :], entries))
            req.sent = text

    def _finish(self, req, text: str, reason: str, kept: int) -> None:
        req.finished = True
        if req.stream and reason == "content_filter" and text:
            req.post("delta", (text, []))  # the refusal, after whatever text had passed the checks
        elif req.stream:
            self._push(req, text, kept)
        rest = req.entries[req.sent_entries : kept] if req.stream else req.entries[:kept]
        req.post(
            "done",
            {"content": text, "finish_reason": reason, "completion_tokens": len(req.tokens), "logprobs": rest},
        )
        self.release(req)
