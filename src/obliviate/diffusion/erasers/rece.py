"""RECE: Reliable and Efficient Concept Erasure (Gong et al. 2024, ECCV 2024, arXiv:2407.12383; reference code
github.com/CharlesGong12/RECE, `close_form_emb_regzero` and `edit_model_adversarial`).

UCE first (see `uce.py`). Then, for `epochs` rounds:

1. the adversarial embedding that makes the *edited* cross-attention projections output what the *original* ones
   output for the concept, in closed form (Eq. 8; the reference code's "regzero" variant, regularised towards 0):

       c' = ( reg I + sum_l W_new,l^T W_new,l )^-1 ( sum_l W_new,l^T W_old,l ) c_e

   summed over every cross-attention key and value projection l, applied to each of the concept's token
   embeddings c_e (UCE's aligned tokens);
2. a UCE edit of the current projections that maps c' (and, our choice, c_e again, so the first erasure is not
   undone) onto the guide's outputs, with the same preserve terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obliviate.diffusion.erasers import ERASERS, Eraser, cross_attention_kv
from obliviate.diffusion.erasers.uce import UCE, aligned_keys, uce_edit


def adversarial_embedding(
    new_weights: list[torch.Tensor], old_weights: list[torch.Tensor], c: torch.Tensor, reg: float
) -> torch.Tensor:
    """Eq. 8: c' [n, d] for token embeddings c [n, d] (float64)."""
    d = c.shape[1]
    mat1 = reg * torch.eye(d, dtype=torch.float64)
    mat2 = torch.zeros(d, d, dtype=torch.float64)
    for wn, wo in zip(new_weights, old_weights):
        wn, wo = wn.double(), wo.double()
        mat1 = mat1 + wn.T @ wn
        mat2 = mat2 + wn.T @ wo
    return c.double() @ torch.linalg.solve(mat1, mat2).T


@ERASERS.register("rece")
@dataclass
class RECE(UCE):
    name = "rece"
    description = "UCE, then closed-form adversarial embeddings erased in turn (Gong et al. 2024)"
    epochs: int = 1
    reg: float = 1e-3
    erase_many = Eraser.erase_many  # its paper erases one concept: several run one after another

    def erase(self, model, concept: str, *, guide: str = "", preserve: tuple[str, ...] = ()):
        edited = super().erase(model, concept, guide=guide, preserve=preserve)
        c_e, c_g = aligned_keys(model, concept, guide)
        keep = [aligned_keys(model, p, p)[0] for p in preserve]
        old = [p.weight.detach().cpu() for p in cross_attention_kv(model.unet)]
        self.adversarial = []
        for _ in range(self.epochs):
            projs = cross_attention_kv(edited.unet)
            adv = adversarial_embedding([p.weight.detach().cpu() for p in projs], old, c_e, self.reg)
            self.adversarial.append(adv)
            for proj in projs:
                new = uce_edit(
                    proj.weight.detach().cpu(),
                    [(c_e, c_g), (adv, c_g)],
                    keep,
                    self.lam,
                    self.erase_scale,
                    self.preserve_scale,
                )
                proj.weight.data = new.to(proj.weight.dtype).to(proj.weight.device)
        return edited
