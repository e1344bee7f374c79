"""UCE: Unified Concept Editing (Gandikota et al. 2024, "Unified Concept Editing in Diffusion Models", WACV 2024,
arXiv:2308.14761; reference code github.com/rohitgandikota/unified-concept-editing, `train-scripts/
train_erase.py`, `edit_model`).

A closed-form edit of every cross-attention key and value projection W (out x d_text), no training (Eq. 7):

    W_new = ( lam W_old + sum_e v*_e c_e^T + sum_p W_old c_p c_p^T ) ( lam I + sum_e c_e c_e^T + sum_p c_p c_p^T )^-1

- c_e: text-encoder outputs of the erased concept's tokens; v*_e = W_old c_guide, the same positions of the guide
  concept (default "": the unconditional prompt), so the edited layer answers the concept as it answered the
  guide. As in the reference code, the tokens taken are those from the concept's last word to the end of the
  padded sequence (the EOS padding carries the concept too), aligned between concept and guide at their last
  words: with f = attention_mask.sum() - 2 (the last word's index), both sequences are cut to
  [f : L - (max(f_concept, f_guide) - f)].
- c_p: the same tokens of each preserved concept, kept mapped as before (W_old c_p), with weight
  `preserve_scale`; `erase_scale` weighs the erase terms.
- lam: the weight of staying at W_old in every other direction (the paper's lambda; identity regulariser).

The solve runs in float64. With no preserve terms and lam -> 0, W_new c_e = W_old c_guide (test).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obliviate.core.errors import UsageError
from obliviate.diffusion.erasers import ERASERS, Eraser, cross_attention_kv


@torch.no_grad()
def aligned_keys(model, old: str, new: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_old [n, d], c_new [n, d]): the two prompts' text embeddings from their last word on, aligned (module
    docstring)."""
    toks = model.tokens([old, new])
    emb = model.text_encoder(input_ids=toks["input_ids"].to(model.device)).last_hidden_state.double()
    L = emb.shape[1]
    f_old, f_new = (int(m.sum()) - 2 for m in toks["attention_mask"])
    far = max(f_old, f_new)
    return emb[0, f_old : L - (far - f_old)], emb[1, f_new : L - (far - f_new)]


def uce_edit(
    W_old: torch.Tensor,
    erase: list[tuple[torch.Tensor, torch.Tensor]],
    preserve: list[torch.Tensor],
    lam: float,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
) -> torch.Tensor:
    """Eq. 7 for one projection. erase: (c_e [n, d], c_guide [n, d]) pairs; preserve: c_p [m, d]."""
    W = W_old.double()
    d = W.shape[1]
    mat1 = lam * W
    mat2 = lam * torch.eye(d, dtype=torch.float64)
    for c, g in erase:
        v = g @ W.T  # v* = W_old c_guide, per position [n, out]
        mat1 = mat1 + erase_scale * v.T @ c
        mat2 = mat2 + erase_scale * c.T @ c
    for c in preserve:
        mat1 = mat1 + preserve_scale * (c @ W.T).T @ c
        mat2 = mat2 + preserve_scale * c.T @ c
    return torch.linalg.solve(mat2.T, mat1.T).T  # mat1 @ mat2^-1


@ERASERS.register("uce")
@dataclass
class UCE(Eraser):
    name = "uce"
    description = "closed-form edit of the cross-attention K/V projections (Gandikota et al. 2024)"
    lam: float = 0.5
    erase_scale: float = 1.0
    preserve_scale: float = 1.0

    def __post_init__(self):
        if self.lam <= 0 and self.preserve_scale <= 0:
            raise UsageError("uce: lam must be > 0 (or preserve terms must be given)")

    def erase(self, model, concept: str, *, guide: str = "", preserve: tuple[str, ...] = ()):
        return self.edit(model, [concept], guide, preserve)

    def erase_many(self, model, concepts: list[str], *, guide: str = "", preserve: tuple[str, ...] = ()):
        """Every concept in one closed form: Eq. 7's sums run over all of them, each mapped onto the guide, as the
        reference code's `edit_model` does with lists of old and new texts."""
        return self.edit(model, concepts, guide, preserve)

    def edit(self, model, concepts: list[str], guide: str, preserve) -> object:
        edited = model.copy()
        erase = [aligned_keys(edited, c, guide) for c in concepts]
        keep = [aligned_keys(edited, p, p)[0] for p in preserve]
        for proj in cross_attention_kv(edited.unet):
            new = uce_edit(proj.weight.detach().cpu(), erase, keep, self.lam, self.erase_scale, self.preserve_scale)
            proj.weight.data = new.to(proj.weight.dtype).to(proj.weight.device)
        return edited
