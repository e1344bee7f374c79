"""Latent harmfulness guard (Zhao et al. 2025, "LLMs Encode Harmfulness and Refusal Separately",
arXiv:2507.11878).

The paper finds that harmfulness is encoded at the last token of the user's instruction (t_inst), separately from
refusal, which is encoded at the post-instruction tokens (t_post-inst). Its "latent guard" classifies a prompt by
the cosine similarity of its hidden state at t_inst to the centroids of harmful and harmless prompts:

    score(x) = (1 / |L|) sum_{l in L} [ cos(h_l(x), mu_l^harmful) - cos(h_l(x), mu_l^harmless) ]

where mu_l is the mean hidden state at t_inst of the training prompts of each class at layer l (Sec. 3 and 5;
we average over the chosen layers, default every layer, where the paper reports per-layer figures). A prompt
scoring >= the threshold is flagged before any token is generated, and its reply becomes a refusal. The
threshold maximises Youden's J on the training prompts.

Fit: harmful and benign rows of the policy (the world's policy_train, or the train half of public prompt files).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obliviate.core.errors import UsageError
from obliviate.engine.hooks import Guard
from obliviate.guards.base import GUARDS, default_refusal, hidden_at, youden_threshold


def _cos(h: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """h [N, L, d], mu [L, d] -> [N, L]."""
    return torch.nn.functional.cosine_similarity(h, mu.unsqueeze(0), dim=-1)


@GUARDS.register("latent")
@dataclass
class LatentGuard(Guard):
    name = "latent"
    description = "cosine to harmful/harmless centroids at the last instruction token (Zhao et al. 2025)"
    layers: str = ""  # comma-separated hidden-state indices (1..L); default: every layer after the embeddings
    position: int = -2  # t_inst relative to the prompt's end: -(post-instruction tokens + 1), set by fit
    threshold: float = 0.0
    refusal: str = ""

    def __post_init__(self):
        self._mu = None  # [2, L', d]: harmful, harmless centroids
        self._header: list[int] = []
        self.refusal = self.refusal or default_refusal()

    def attach(self, model, tok):
        from obliviate.models.encode import assistant_header, chat_formatted

        self._header = assistant_header(tok) if chat_formatted(tok) else []

    def layer_list(self) -> list[int]:
        return [int(x) for x in self.layers.split(",") if x.strip()]

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        """states [N, L', d] at t_inst (the chosen layers) -> score [N]."""
        return (_cos(states, self._mu[0]) - _cos(states, self._mu[1])).mean(-1)

    @classmethod
    def fit(cls, model, tok, inputs: dict, **options) -> "LatentGuard":
        from obliviate.models.encode import post_instruction_tokens, prompt_ids

        rows = inputs.get("policy_train") or []
        harm = [r["prompt"] for r in rows if r["kind"] == "harmful"]
        safe = [r["prompt"] for r in rows if r["kind"] == "benign"]
        if len(harm) < 2 or len(safe) < 2:
            raise UsageError(
                f"latent: needs at least 2 harmful and 2 benign training prompts (has {len(harm)} and {len(safe)})"
            )
        guard = cls(**options)
        guard.position = -(post_instruction_tokens(tok) + 1)
        states = hidden_at(
            model, [prompt_ids(tok, p) for p in harm + safe], guard.position, tok.pad_token_id or 0
        )  # [N, L+1, d]
        layers = guard.layer_list() or list(range(1, states.shape[1]))
        if any(not 0 <= x < states.shape[1] for x in layers):
            raise UsageError(f"latent: layers must be in 0..{states.shape[1] - 1}")
        guard.layers = ",".join(map(str, layers))
        states = states[:, layers]
        guard._mu = torch.stack([states[: len(harm)].mean(0), states[len(harm) :].mean(0)])
        labels = [1] * len(harm) + [0] * len(safe)
        guard.threshold = youden_threshold(guard.scores(states).tolist(), labels)
        return guard

    def t_inst(self, ids: list[int]) -> int:
        """The last instruction token: just before the last assistant header in the prompt (a prefilled reply
        follows the header), else `position` from the end."""
        h = self._header
        for j in range(len(ids) - len(h), -1, -1) if h else ():
            if ids[j : j + len(h)] == h:
                return j - 1
        return len(ids) + self.position

    def taps(self):
        return [(x, None) for x in self.layer_list()]

    def on_prefill(self, hidden, rows, session):
        ids = session.prompt_ids.tolist()
        at = torch.tensor([self.t_inst(row) for row in ids])
        rows_idx = torch.arange(len(ids))
        states = torch.stack([hidden[(x, None)][rows_idx, at] for x in self.layer_list()], 1)  # [B, L', d]
        for r, s in enumerate(self.scores(states.to(self._mu.device)).tolist()):
            rows[r].scores[self.name] = s
            if s >= self.threshold:
                session.halt(r, self.name, self.refusal)

    def prompt_scores(self, model, tok, prompts: list[str]) -> list[float]:
        from obliviate.models.encode import prompt_ids

        states = hidden_at(model, [prompt_ids(tok, p) for p in prompts], self.position, tok.pad_token_id or 0)
        return self.scores(states[:, self.layer_list()]).tolist()

    def report(self, model, tok, inputs):
        from sklearn.metrics import roc_auc_score

        test = [r for r in inputs.get("policy_test") or [] if r["kind"] in ("harmful", "benign")]
        labels = [int(r["kind"] == "harmful") for r in test]
        if len(set(labels)) < 2:
            return {}
        s = self.prompt_scores(model, tok, [r["prompt"] for r in test])
        flagged = [x >= self.threshold for x in s]
        return {
            "auroc_test": float(roc_auc_score(labels, s)),
            "flag_rate_harmful": sum(f for f, y in zip(flagged, labels) if y) / sum(labels),
            "flag_rate_benign": sum(f for f, y in zip(flagged, labels) if not y) / (len(labels) - sum(labels)),
            "n_test": len(test),
        }

    def tensors(self):
        return {"centroids": self._mu}

    def load_tensors(self, tensors):
        self._mu = tensors["centroids"]
