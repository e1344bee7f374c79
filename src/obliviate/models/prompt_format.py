"""How question-answer items are written for a model: in its own chat template, or, for a model without one (a
base model) or with `--no-chat-template`, in a plain template.

The plain template is TOFU's by default, "Question: {question}\\nAnswer: {answer}" (the format TOFU fine-tunes and
unlearns its base models in, phi-1.5 among them). The prompt is the text before `{answer}`; the spaces just before
`{answer}` belong to the answer's first token, as in the tokenisation of the whole text (" Paris", not " " and
"Paris"), so prompts end in "Answer:" and the model continues with the answer's own tokens. Only the answer and the
end-of-sequence token carry labels (OpenUnlearning's split; TOFU's own code also trains on "Answer: ").

This module is the standard library only: the command line validates `--prompt-template` before torch loads.
`models.encode` reads the template a tokenizer was given (`PLAIN_ATTR`) and turns items into ids.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

from obliviate.core.errors import UsageError

DEFAULT_TEMPLATE = "Question: {question}\nAnswer: {answer}"
# The raw prompt that `refusal-eval` / `align --no-chat-template` have always given a model without a chat template:
# the question, a newline, and the answer's ids as the tokenizer gives them alone. `models.encode` keeps it token
# for token, so those figures do not move.
RAW_TEMPLATE = "{question}\n"
# The tokenizer attribute that holds the plain template its items are written in (absent: its chat template).
# An attribute of the loaded object, never saved: a model directory keeps its own chat template, if it has one.
PLAIN_ATTR = "obliviate_plain_template"

_FIELDS = ("{question}", "{answer}")


def check_template(template: str, flag: str = "--prompt-template") -> str:
    """A plain template as typed on the command line -> the template (the escapes \\n and \\t become a newline and
    a tab; \\\\ a backslash). It must hold {question} once; {answer}, if anywhere, only at its end (without it, the
    answer follows the template's last character). Anything else is a UsageError (exit 2)."""
    text = re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], template)
    shown = show(text)
    if text.count("{question}") != 1:
        raise UsageError(f"{flag} must contain {{question}} exactly once, got '{shown}'")
    if text.count("{answer}") > 1 or ("{answer}" in text and not text.endswith("{answer}")):
        raise UsageError(f"{flag}: {{answer}} may appear once, at the end of the template, got '{shown}'")
    other = sorted(set(re.findall(r"\{[^{}]*\}", text)) - set(_FIELDS))
    if other:
        raise UsageError(f"{flag}: unknown field(s) {', '.join(other)} in '{shown}' (known: {{question}}, {{answer}})")
    return text


def show(template: str) -> str:
    """The template on one line, newlines and tabs written as \\n and \\t."""
    return template.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def prompt_parts(template: str, question: str) -> tuple[str, str, str]:
    """(prompt text, separator, anchor) of an item: the prompt is the text before {answer} without its trailing
    spaces; the separator is those spaces, which open the answer; the anchor is the template's text between
    {question} and {answer}, also without them (the same for every item: "\\nAnswer:" in TOFU's)."""
    head = template[: -len("{answer}")] if template.endswith("{answer}") else template
    before, after = head.split("{question}")
    text = before + question + after
    prompt = text.rstrip(" ")
    return prompt, text[len(prompt) :], after.rstrip(" ")


@dataclass
class PromptFormat:
    """How one command writes items for the models it loads (`load_model(..., prompt_format=)`): a model with a
    chat template keeps it, unless `force` (`--no-chat-template`); any other gets `template`. The first model
    written plainly is named in one line on stderr; `config()` is what results record."""

    template: str = DEFAULT_TEMPLATE
    force: bool = False
    given: bool = False  # the template was asked for: no "--prompt-template to change" hint; a note if unused
    models: list[str] = field(default_factory=list)  # the models whose items were written plainly
    _unused_said: bool = False

    def apply(self, tok, name: str) -> None:
        """Give `tok` (just loaded from `name`) the plain template where it applies."""
        if getattr(tok, "chat_template", None) is not None and not self.force:
            if self.given and not self._unused_said:
                self._unused_said = True
                print(
                    f"{name} has a chat template: --prompt-template is not used (--no-chat-template to use it)",
                    file=sys.stderr,
                    flush=True,
                )
            return
        setattr(tok, PLAIN_ATTR, self.template)
        if not self.models:
            why = "--no-chat-template" if self.force else f"{name} has no chat template"
            print(
                f"{why}: formatting items as '{show(self.template)}'"
                + ("" if self.given else " (--prompt-template to change)"),
                file=sys.stderr,
                flush=True,
            )
        if str(name) not in self.models:
            self.models.append(str(name))

    def config(self) -> dict:
        """{"prompt_format": {"template", "models", "no_chat_template"}} when a model was written plainly, else {}:
        the results of runs in chat templates stay as they were."""
        if not self.models:
            return {}
        return {
            "prompt_format": {"template": self.template, "models": list(self.models), "no_chat_template": self.force}
        }


def raw_format(no_chat_template: bool) -> PromptFormat | None:
    """`refusal-eval` / `align --no-chat-template`: every model's prompts raw (`RAW_TEMPLATE`); None without it (a
    model must then have a chat template)."""
    return PromptFormat(template=RAW_TEMPLATE, force=True, given=True) if no_chat_template else None


def prompt_format(template: str | None, no_chat_template: bool) -> PromptFormat:
    """The command line's `--prompt-template` / `--no-chat-template` -> a PromptFormat (a bad template: exit 2)."""
    if template is None:
        return PromptFormat(force=no_chat_template)
    return PromptFormat(template=check_template(template), force=no_chat_template, given=True)
