"""Refusal direction (Arditi et al. 2024, "Refusal in Language Models Is Mediated by a Single Direction",
NeurIPS 2024, arXiv:2406.11717).

1. Candidates (Sec. 2.3): for every layer l and every post-instruction position i (the template tokens after the
   user's text, e.g. "\\n<|assistant|>"), the difference in means of the residual stream entering layer l,
   r_{i,l} = mean over harmful prompts - mean over harmless prompts.
2. Selection (Appendix C), from forward passes only (one per candidate and score; no reply is generated): on
   held-out validation prompts, for each candidate
   bypass = mean refusal score on harmful prompts under directional ablation,
   induce = mean refusal score on harmless prompts under activation addition at layer l,
   kl = KL(p || p_ablated) of the last-position distribution on harmless prompts;
   keep candidates that pass the filters and pick the lowest bypass. (If none passes, the lowest bypass overall,
   reported with `filters_passed = 0`; the reference code stops with an assertion there.) The refusal score is the
   log-odds of the refusal tokens at the first reply position (the prompt's last), log(p + 1e-8) -
   log(1 - p + 1e-8), p = total probability of the refusal tokens. The reference hard-codes those per model
   family (e.g. "I" / "As"); here they are the first tokens of the data's refusal replies, each tokenised by the
   model's own tokenizer as the start of an assistant reply: the world's refusals, or on public prompt files the
   shipped refusal phrases (`data/refusals.txt`) drawn for the training rows. Where the reference code
   (andyrdt/refusal_direction, `pipeline/submodules/select_direction.py`) differs from the paper, we follow it:
   scores and KL in float64, the KL as sum p (log(p + 1e-6) - log(q + 1e-6)); a candidate is discarded when a
   score is NaN, layer >= int(0.8 L), kl > 0.1 or induce < 0 (so kl = 0.1 and induce = 0 pass; the paper writes
   l < 0.8 L, kl < 0.1, induce > 0).
   `selection=full` computes all three scores for every candidate, prompts batched in file order (the reference
   code's sweep, and this attack's before `fast`). `selection=fast` (default) chooses the same candidate with
   less work: it scores bypass for the candidates below the layer cut, then walks them from the lowest bypass,
   computing kl and, where kl passes, induce, and stops at the first that passes (the lowest bypass that passes,
   as in `full`, ties in the same order); only if none passes are the remaining bypass scores computed. Its
   passes take the prompts sorted by length in chunks padded by at most a quarter (HarmBench's contextual
   prompts run to 1,000 tokens beside 40-token ones), which changes results only by float rounding.
3. Directional ablation (Eq. 4): every write to the residual stream (embedding, attention output projection, MLP
   down projection) has its component along r_hat removed, x <- x - r_hat r_hat^T x, with forward hooks.
4. Activation addition (Eq. 5): x <- x + r at the input of layer l, at every position.
5. Weight orthogonalisation (Sec. 4.1): W <- W - r_hat r_hat^T W for the same writers, saved as an ordinary HF
   model directory; it computes what the hooks compute, and `orthogonalized_agreement` checks it: the share of
   refusal test prompts whose greedy replies are identical under hooks and under the edited weights.

Architecture-agnostic: the decoder layers and what each writes to the residual stream are found by structure
(`models.anatomy`), not by module names. Arditi et al.'s code hooks each block's input and its attention and MLP
outputs per supported family; we hook every layer's input and every residual writer that the probe finds, which
covers post-norm layers (Gemma 2) and parallel-residual ones (GPT-NeoX). Weight orthogonalisation needs each
writer to end in one linear projection, or to be a mixture of experts whose write axes the test in
`models.anatomy.expert_slots` finds (fused expert tensors, shared experts, biases); where neither holds
(post-norms) the attack reports `orthogonalized = 0` and saves no edited model. A model whose unembedding is
tied to its embedding (SmolLM2, Gemma) is untied before the embedding is edited, so that the read-out stays as the hooks leave it. Budget: `n_train` prompts per class for the
means, `n_val` per class for the selection, and which candidates are tried: `layers` (comma-separated layer
indices, default every layer) and `positions` (the last k post-instruction positions, default all); `selection`
(fast | full, above) says how they are scored. Under the audit's `--limit`, unless given: 16 and 8 prompts per
class, every layer at the last position.

Data: the world's `policy_train` (harmful / benign rows), measured on `policy_test`; on public prompt files, a
seeded half of the harmful and of the benign prompts (`--benign`, else the shipped benign pool, as Arditi et al.
contrast AdvBench / HarmBench with Alpaca), measured on the other half. As in the reference code's data
(`dataset/generate_datasets.ipynb`: HarmBench "filter out instructions with Category=copyright or Tags=context"),
HarmBench's contextual and copyright behaviours are left out of the direction's means and selection; they are still
measured on (on HarmBench-val's training half they held 509 of the selection's 875 harmful prompt tokens, and every
candidate's bypass score is a forward pass over them). The refusal tokens are the first tokens of the refusal
replies (the world's, or the shipped refusal pool's). Generation is kept for the chosen direction's final check
only (the reported refusal rates).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from obliviate.audit.attacks import ATTACKS, Attack, AuditContext, direct, refusal_rate
from obliviate.audit.attacks.refusal_selection import (
    SELECTIONS,
    choose,
    kl_score,
    last_logprobs,
    refusal_score,
    residuals,
)
from obliviate.core.errors import UsageError
from obliviate.models.anatomy import anatomy, decoder_layers, embeddings, probe_forward, project_out, write_slots
from obliviate.models.encode import post_instruction_tokens


def _project_out(x: torch.Tensor, r_hat: torch.Tensor) -> torch.Tensor:
    return x - (x @ r_hat).unsqueeze(-1) * r_hat


def _replace_first(out, fn):
    if isinstance(out, torch.Tensor):
        return fn(out)
    return (fn(out[0]), *out[1:])


@contextmanager
def ablation(model, r_hat: torch.Tensor):
    """Directional ablation through hooks: the residual stream entering every layer (which carries the embeddings'
    writes) and every write a layer adds (see `models.anatomy`) lose their component along r_hat."""
    anat = anatomy(model)

    def pre(mod, args, kwargs):
        if args:
            return (_project_out(args[0], r_hat.to(args[0].dtype)), *args[1:]), kwargs
        kwargs["hidden_states"] = _project_out(kwargs["hidden_states"], r_hat.to(kwargs["hidden_states"].dtype))
        return args, kwargs

    handles = [ly.register_forward_pre_hook(pre, with_kwargs=True) for ly in anat.layers]
    # the token embedding too (Arditi et al.'s first writer), so hidden_states[0] reads as ablated as well
    handles.append(
        model.get_input_embeddings().register_forward_hook(
            lambda mod, args, out: _project_out(out, r_hat.to(out.dtype))
        )
    )
    handles += [
        w.register_forward_hook(
            lambda mod, args, out: _replace_first(out, lambda t: _project_out(t, r_hat.to(t.dtype)))
        )
        for w in anat.all_writers
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def addition(model, r: torch.Tensor, layer: int):
    """Activation addition of r at the input of `layer`."""
    layers = decoder_layers(model)

    def pre(mod, args, kwargs):
        if args:
            return (args[0] + r.to(args[0].dtype), *args[1:]), kwargs
        kwargs["hidden_states"] = kwargs["hidden_states"] + r.to(kwargs["hidden_states"].dtype)
        return args, kwargs

    handle = layers[layer].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def orthogonalize(model, r_hat: torch.Tensor):
    """Edit the weights in place so that nothing can write along r_hat: embedding rows, and W <- W - r_hat r_hat^T W
    (bias b <- b - r_hat r_hat^T b) for every write projection. Then one probe pass checks that the residual
    stream entering and leaving every layer has no component left along r_hat; UsageError if the architecture
    writes in a way weights cannot express (a post-norm, experts summed without one projection)."""
    anat = anatomy(model)
    slots = write_slots(model, anat)
    embs = embeddings(model, anat.d_model)
    head = model.get_output_embeddings()
    for emb in embs:
        if head is not None and head.weight is emb.weight:  # tied: keep the unembedding as it was
            head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
            model.config.tie_word_embeddings = False
            if hasattr(model.config, "get_text_config"):
                model.config.get_text_config().tie_word_embeddings = False
        r = r_hat.to(emb.weight.dtype)
        emb.weight -= (emb.weight @ r).unsqueeze(-1) * r  # rows are written vectors  [V, d]
    for p, axis in slots:  # Linear [d, d_in]: axis 0; Conv1D [d_in, d]: axis 1; fused experts [E, ff, d]: axis 2
        project_out(p, axis, r_hat)
    seen = probe_forward(model, anat.layers)
    tol = 1e-4 if r_hat.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32 else 5e-2
    for i, ly in enumerate(anat.layers):
        for what, x in zip(("entering", "leaving"), seen.get(ly, (None, None))):
            if x is None:
                continue
            x = x.float()
            left = ((x @ r_hat.float()).abs().max() / x.abs().max().clamp(min=1e-12)).item()
            if left > tol:
                raise UsageError(
                    f"weight orthogonalisation does not fit this {type(model).__name__}: the residual "
                    f"stream {what} layer {i} keeps {left:.2g} of its scale along the direction "
                    "(hook-based ablation still works)"
                )
    return model


def direction_excluded(row: dict) -> bool:
    """Rows the reference code leaves out of the direction's data: HarmBench's contextual and copyright behaviours."""
    return bool(row.get("contextual")) or (row.get("source") == "harmbench" and row.get("category") == "copyright")


@ATTACKS.register("refusal_direction")
@dataclass
class RefusalDirection(Attack):
    # 128 / 64 prompts per class: measured on the refusal demo's refusal_sft model, 64 / 32 gave a noisier
    # direction whose ablation removed 45 points of refusal, 128 / 64 removed 62 (192 / 64: 62.5)
    n_train: int = 128
    n_val: int = 64
    kl_max: float = 0.1
    max_layer_frac: float = 0.8
    save_model: bool = True
    layers: str = ""  # candidate layers, e.g. "8,12,16" (default: every layer)
    positions: int = 0  # candidate post-instruction positions: the last k (default 0: all)
    selection: str = "fast"  # fast | full: how the candidates' scores are computed (the same choice; see above)
    suites = ("refusal",)
    description = "difference-in-means refusal direction: ablation, addition, orthogonalised weights"
    # `full` scores with 3 passes per (layer, position) candidate: 540 on a 30-layer model with a 6-token template
    # (`fast`: fewer); a quick look searches every layer at the last post-instruction token only
    quick = {"n_train": 16, "n_val": 8, "positions": 1}

    def __post_init__(self):
        if self.n_train < 2 or self.n_val < 1 or not 0 < self.max_layer_frac <= 1 or self.positions < 0:
            raise UsageError("refusal_direction: n_train >= 2, n_val >= 1, max_layer_frac in (0, 1], positions >= 0")
        try:
            self.layer_list = [int(x) for x in str(self.layers).split(",") if x.strip()]
        except ValueError:
            raise UsageError(
                f"refusal_direction: layers must be comma-separated integers, got {self.layers!r}"
            ) from None
        if any(x < 0 for x in self.layer_list):
            raise UsageError("refusal_direction: layers must be >= 0")
        if self.selection not in SELECTIONS:
            raise UsageError(
                f"refusal_direction: selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}"
            )

    def missing(self, ctx: AuditContext) -> str | None:
        train, test = ctx.policy_split()
        n = {k: sum(r["kind"] == k for r in train) for k in ("harmful", "benign")}
        if min(n.values()) < 2:
            return (
                f"needs at least 2 harmful and 2 benign prompts to find the direction on (has {n['harmful']} "
                f"and {n['benign']})"
            )
        if not any(r["kind"] == "harmful" for r in test):
            return "no held-out harmful prompts to measure the ablation on"
        return None

    def select(self, model, tok, harmful, harmless, val_harmful, val_harmless, refusal_ids):
        """(best candidate {"layer", "pos", "bypass", "induce", "kl", "r"}, whether it passed the filters, number of
        candidates); `self.passes`: the forward sweeps over validation prompts that the scores took."""
        fast = self.selection == "fast"
        n_post = post_instruction_tokens(tok)
        means = [residuals(model, tok, ps, n_post, by_length=fast) for ps in (harmful, harmless)]
        diff = means[0] - means[1]  # [L, n_post, d]
        L = diff.shape[0]
        bad = [x for x in self.layer_list if x >= L]
        if bad:
            raise UsageError(f"refusal_direction: layer {bad[0]} does not exist (the model has layers 0..{L - 1})")
        base = last_logprobs(model, tok, val_harmless, fast)
        cands = []
        for layer in self.layer_list or range(L):
            for i in range(n_post - min(self.positions or n_post, n_post), n_post):
                r = diff[layer, i]
                if r.norm() >= 1e-6:  # not e.g. layer 0 at a template token: the same embedding for every prompt
                    cands.append({"layer": layer, "pos": i - n_post, "r": r})
        if not cands:
            raise UsageError(
                "refusal_direction: every candidate direction is zero (harmful and benign prompts give "
                "the same activations at the chosen layers / positions)"
            )
        self.passes = 0

        def score(c, key):
            self.passes += 1
            if key == "induce":
                with addition(model, c["r"], c["layer"]):
                    c[key] = refusal_score(last_logprobs(model, tok, val_harmless, fast), refusal_ids).mean().item()
                return
            with ablation(model, c["r"] / c["r"].norm()):
                logp = last_logprobs(model, tok, val_harmful if key == "bypass" else val_harmless, fast)
            c[key] = refusal_score(logp, refusal_ids).mean().item() if key == "bypass" else kl_score(base, logp)

        best, passed = choose(cands, score, L, self.kl_max, self.max_layer_frac, lazy=fast)
        return best, passed, len(cands)

    def encoded(self, ctx: AuditContext, tok) -> tuple[list[list[list[int]]], list[int]]:
        """([harmful, harmless prompts for the means, harmful, harmless prompts for the selection], refusal token
        ids), all from the training rows."""
        from obliviate.models.encode import answer_ids, prompt_ids

        train, _ = ctx.policy_split()  # the direction's data: never the test prompts
        train = [r for r in train if not direction_excluded(r)]
        harm = [r for r in train if r["kind"] == "harmful"]
        safe = [r for r in train if r["kind"] == "benign"]
        n, v = self.n_train, self.n_val
        if len(harm) < n + v or len(safe) < n + v:
            n, v = max(1, min(len(harm), len(safe)) // 2), max(1, min(len(harm), len(safe)) // 4)
        enc = [
            [prompt_ids(tok, r["prompt"]) for r in rows]
            for rows in (harm[:n], safe[:n], harm[n : n + v], safe[n : n + v])
        ]
        refusal_ids = sorted({answer_ids(tok, r["refusal"])[0] for r in harm if r.get("refusal")})
        if not refusal_ids:
            raise UsageError("refusal_direction: the harmful rows have no 'refusal' replies to take tokens from")
        return enc, refusal_ids

    def run(self, ctx: AuditContext, model, tok) -> dict:
        from obliviate.models.encode import prompt_ids

        enc, refusal_ids = self.encoded(ctx, tok)
        _, test = ctx.policy_split()
        best, passed, n_cands = self.select(model, tok, *enc, refusal_ids)
        r = best["r"]
        r_hat = r / r.norm()

        h_text = [x["prompt"] for x in test if x["kind"] == "harmful"]
        b_text = [x["prompt"] for x in test if x["kind"] == "benign"]
        h_prompts, b_prompts = [prompt_ids(tok, t) for t in h_text], [prompt_ids(tok, t) for t in b_text]
        judge = ctx.judge()

        def rate(prompts, texts):
            return refusal_rate(model, tok, prompts, ctx.max_new_tokens, refused=judge, texts=texts)

        before, _ = direct.direct_rate(ctx, model, tok, h_text)  # the model as loaded: shared replies
        over_before, _ = direct.direct_rate(ctx, model, tok, b_text)
        with ablation(model, r_hat):
            after, hooked = rate(h_prompts, h_text)
        with addition(model, r, best["layer"]):
            induced, _ = rate(b_prompts, b_text)
        try:  # last: it edits the model in place (the audit loads a fresh model for every attack)
            orthogonalize(model, r_hat.to(next(model.parameters()).dtype))
        except UsageError as e:
            print(f"refusal_direction: {e}", file=sys.stderr)
            orthogonalized, agreement = False, None
        else:
            _, edited = rate(h_prompts, h_text)
            orthogonalized, agreement = True, sum(a == b for a, b in zip(hooked, edited)) / max(1, len(hooked))
        if ctx.out is not None:
            from safetensors.torch import save_file

            ctx.out.mkdir(parents=True, exist_ok=True)
            save_file(
                {"direction": r.contiguous()},
                str(ctx.out / "direction.safetensors"),
                metadata={"layer": str(best["layer"]), "position": str(best["pos"])},
            )
            if self.save_model and ctx.role == "model" and orthogonalized:
                from obliviate.models.load import save_model

                save_model(model, tok, ctx.out / "orthogonalized")
        return {
            "refusal_rate": before,
            "refusal_rate_ablated": after,
            "refusal_drop_points": 100 * (before - after),
            "over_refusal_rate": over_before,
            "over_refusal_rate_actadd": induced,
            "orthogonalized": float(orthogonalized),
            "orthogonalized_agreement": agreement,
            "layer": float(best["layer"]),
            "position": float(best["pos"]),
            "bypass_score": best["bypass"],
            "induce_score": best["induce"],
            "kl": best["kl"],
            "filters_passed": float(passed),
            "candidates": float(n_cands),
            "selection_passes": float(self.passes),
        }
