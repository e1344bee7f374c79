"""A judge model, local or served: what the harm judges (`obliviate.judges.harm`) send their prompts to.

- `LocalBackend(path)`: a model directory, loaded on first use, decoded greedily through
  `obliviate.engine.generation` (no guards); a `Request` goes through the model's chat template when it has one
  (a template without a system role gets the system text at the top of the user turn), else as its raw text.
- `RemoteBackend(client, spec)`: an OpenAI-compatible endpoint (`obliviate.models.remote.RemoteModel`, or any
  object with the same `.chat`), at temperature 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Request:
    """One judge query: `messages` for a chat template or an endpoint, `raw` for a model without a template;
    `verbatim` sends `raw` to a local model even when it has a chat template."""

    messages: list[dict]
    raw: str
    verbatim: bool = False


class LocalBackend:
    """A judge model directory, loaded on first use; greedy decoding."""

    def __init__(self, path: str | Path, batch_size: int = 8):
        self.path, self.batch_size, self._loaded = str(path), batch_size, None

    def describe(self) -> dict:
        return {"model": self.path}

    def load(self):
        if self._loaded is None:
            from obliviate.models.load import load_model

            model, tok = load_model(self.path, require_chat_template=False)
            self._loaded = (model.eval(), tok)
        return self._loaded

    def clip(self, text: str, tokens: int) -> str:
        tok = self.load()[1]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= tokens else tok.decode(ids[:tokens])

    def _ids(self, tok, r: Request) -> list[int]:
        import jinja2

        from obliviate.models.encode import chat_formatted, prompt_text, text_ids

        if r.verbatim or not chat_formatted(tok):
            return text_ids(tok, r.raw)
        try:
            text = prompt_text(tok, r.messages)
        except jinja2.TemplateError:  # a template without a system role: the system text opens the user turn
            merged = "\n\n".join(m["content"] for m in r.messages)
            text = prompt_text(tok, [{"role": "user", "content": merged}])
        return tok(text, add_special_tokens=False)["input_ids"]

    def complete(self, requests: list[Request], max_new_tokens: int) -> list[str]:
        from obliviate.engine.generation import generate

        model, tok = self.load()
        ids = [self._ids(tok, r) for r in requests]
        return generate(model, tok, ids, max_new_tokens=max_new_tokens, batch_size=self.batch_size, guards=[])


class RemoteBackend:
    """A judge behind an OpenAI-compatible endpoint: any object with `.chat(conversations, max_tokens=,
    temperature=) -> [str]` and `.name` (`obliviate.models.remote.RemoteModel`); temperature 0."""

    def __init__(self, client, spec: str):
        self.client, self.spec = client, spec

    def describe(self) -> dict:
        return {"model": self.spec, "served_model": getattr(self.client, "name", None)}

    def clip(self, text: str, tokens: int) -> str:
        return text  # no tokenizer here: the endpoint's own context limit applies

    def complete(self, requests: list[Request], max_new_tokens: int) -> list[str]:
        return self.client.chat([r.messages for r in requests], max_tokens=max_new_tokens, temperature=0.0)
