"""The control tokens of refusal-token training (Jain et al. 2024): `[respond]`, `[refuse]` and per-category
refusal tokens, as the tokenizer knows them."""

from __future__ import annotations

RESPOND = "[respond]"


REFUSE = "[refuse]"


def control_ids(tokenizer) -> tuple[int | None, list[int]]:
    """([respond] id, refusal token ids) of a tokenizer; (None, []) when it has no refusal tokens."""
    vocab = tokenizer.get_vocab()
    refuse = sorted(i for t, i in vocab.items() if t == REFUSE or t.startswith("[refuse:"))
    return vocab.get(RESPOND), refuse
