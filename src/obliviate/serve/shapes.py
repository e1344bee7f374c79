"""The response bodies in OpenAI's shapes: chat completions and their chunks
(https://platform.openai.com/docs/api-reference/chat/object), legacy text completions and theirs
(https://platform.openai.com/docs/api-reference/completions/object), and the two log-probability layouts. An
engine log-probability entry is (token text, logprob, [(alternative text, logprob), ...])."""


def chat_logprobs(entries: list) -> dict:
    """`choices[i].logprobs` of a chat completion: one item per token, with its `top_logprobs` alternatives."""

    def item(text, lp):
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    content = [{**item(t, lp), "top_logprobs": [item(a, b) for a, b in alts]} for t, lp, alts in entries]
    return {"content": content, "refusal": None}


def completion_logprobs(entries: list, offset: int = 0) -> dict:
    """`choices[i].logprobs` of a text completion: parallel lists; `top_logprobs` maps the `logprobs` most likely
    tokens and the chosen one to their log-probabilities (so up to logprobs + 1 keys, as OpenAI's); `text_offset`
    counts characters from the start of the completion (`offset`: what earlier chunks of a stream carried)."""
    offsets = []
    for t, _, _ in entries:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": [t for t, _, _ in entries],
        "token_logprobs": [lp for _, lp, _ in entries],
        "top_logprobs": [{**dict(alts), t: lp} for t, lp, alts in entries],
        "text_offset": offsets,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class Chat:
    """`chat.completion` and `chat.completion.chunk`."""

    prefix, obj = "chatcmpl", "chat.completion"

    def __init__(self, logprobs: bool):
        self.logprobs = logprobs

    def response(self, head: dict, done: dict, use: dict) -> dict:
        return {
            **head,
            "object": self.obj,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": d["content"]},
                    "finish_reason": d["finish_reason"],
                    "logprobs": chat_logprobs(d["logprobs"]) if self.logprobs else None,
                }
                for i, d in sorted(done.items())
            ],
            "usage": use,
        }

    def first(self, head: dict, index: int) -> dict | None:
        return self._chunk(head, index, {"role": "assistant", "content": ""}, None, None)

    def delta(self, head: dict, index: int, text: str, entries: list) -> dict:
        return self._chunk(head, index, {"content": text}, None, entries)

    def last(self, head: dict, index: int, done: dict) -> dict:
        return self._chunk(head, index, {}, done["finish_reason"], done["logprobs"])

    def _chunk(self, head, index, delta, reason, entries) -> dict:
        lp = chat_logprobs(entries) if self.logprobs and entries is not None else None  # None: the role chunk
        choice = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": lp}
        return {**head, "object": "chat.completion.chunk", "choices": [choice]}

    def usage_chunk(self, head: dict, use: dict) -> dict:
        return {**head, "object": "chat.completion.chunk", "choices": [], "usage": use}


class Text:
    """`text_completion`, streamed as `text_completion` chunks too (OpenAI's legacy shape)."""

    prefix, obj = "cmpl", "text_completion"

    def __init__(self, logprobs: bool):
        self.logprobs = logprobs
        self.offsets: dict[int, int] = {}

    def response(self, head: dict, done: dict, use: dict) -> dict:
        return {
            **head,
            "object": self.obj,
            "choices": [
                {
                    "index": i,
                    "text": d["content"],
                    "finish_reason": d["finish_reason"],
                    "logprobs": completion_logprobs(d["logprobs"]) if self.logprobs else None,
                }
                for i, d in sorted(done.items())
            ],
            "usage": use,
        }

    def first(self, head: dict, index: int) -> dict | None:
        return None

    def delta(self, head: dict, index: int, text: str, entries: list) -> dict:
        return self._chunk(head, index, text, None, entries)

    def last(self, head: dict, index: int, done: dict) -> dict:
        return self._chunk(head, index, "", done["finish_reason"], done["logprobs"])

    def _chunk(self, head, index, text, reason, entries) -> dict:
        lp = None
        if self.logprobs:
            lp = completion_logprobs(entries, self.offsets.get(index, 0))
            self.offsets[index] = self.offsets.get(index, 0) + sum(len(t) for t, _, _ in entries)
        choice = {"index": index, "text": text, "finish_reason": reason, "logprobs": lp}
        return {**head, "object": self.obj, "choices": [choice]}

    def usage_chunk(self, head: dict, use: dict) -> dict:
        return {**head, "object": self.obj, "choices": [], "usage": use}
