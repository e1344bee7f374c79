"""Expert steering for mixture-of-experts models (MoTE: Dahlke et al. 2025, "Mixture of Tunable Experts";
SteerMoE: Fayyaz et al. 2025, "Steering MoE LLMs via Expert (De)Activation", arXiv:2509.09660).

Fit: the model's own greedy replies to the training prompts are judged (keyword judges GCG + JailbreakBench) as
refused or complied. For every (layer, expert) the activation frequency is the share of tokens routed to the
expert (it is in the token's top-k); the score is its frequency on refused minus on complied examples (SteerMoE's
risk difference; MoTE scores experts by their activation difference between refused and answered prompts).
`tokens` says which tokens count: `reply` (default), the tokens of the model's own reply, read with its prompt
as context, so the contrast is writing a refusal versus writing an answer; `prompt`, the prompt's tokens, which
also contrasts what the prompts are about (harmful versus benign topics); `decision`, the last prompt token
alone, whose output predicts the reply's first token: where the model decides to refuse or to answer; `paired`,
SteerMoE's own design: the same prompts teacher-forced with a refusal and with a compliance answer (rows with
both `refusal` and `answer`, such as the world's harmful policy prompts), so neither the topic nor the model's
own replies enter the contrast. At inference, through router hooks (`obliviate.engine.hooks.routing_hooks`), the `k`
experts with the highest scores are switched `off` (their router logit -> -inf, so the top-k is taken among the
others and its weights re-normalised: MoTE's "switch off", which lowers refusal) or `on` (logit + 1e4, always in
the top-k: raises refusal). `select=random` switches k experts drawn with `seed` instead: the control.

`score=ablation` (the default) adds a causal check to these activation differences. A routing frequency says where
refusal tokens go, not which experts a refusal needs: on tiny Mixtrals aligned with refusal SFT, the experts with
the largest frequency differences were often not the ones whose removal broke refusal (docs/benchmarks.md, expert steering;
Marbut et al. 2026, "Expert-Aware Refusal Steering", arXiv:2606.04160, also find that refusal signals differ from
routing behaviour). So the `candidates` experts with the largest |frequency difference| are each switched off alone
and scored by how much more that lowers the mean per-token log-likelihood of the model's own refusals than of its
own answers (teacher-forced on the training prompts): ablation in the sense of causal mediation analysis (Vig et al.
2020; Meng et al. 2022's causal tracing), one pass over the training replies per candidate. Experts not tried score
-inf. `score=frequency` keeps the activation differences alone.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass

import torch

from obliviate.core.errors import UsageError
from obliviate.core.progress import progress_bar
from obliviate.engine.hooks import Guard, router_modules, router_output
from obliviate.guards.base import GUARDS
from obliviate.guards.refusal_predictor import judged_replies
from obliviate.models.anatomy import num_experts, text_config


@torch.no_grad()
def routing_frequency(model, seqs: list[list[int]], top_k: int, starts: list[int] | None = None) -> torch.Tensor:
    """[L, E]: share of the tokens of `seqs` (from `starts[i]` on in sequence i; default all) for which each expert
    of each MoE layer is in the top-k."""
    from obliviate.engine.generation import left_pad

    routers = router_modules(model)
    counts, seen = None, {}

    def hook(layer):
        def fn(m, args, out):
            logits, _, idx = router_output(out)
            idx = logits.topk(top_k, -1).indices if idx is None else idx
            seen[layer] = idx.reshape(-1, idx.shape[-1])  # [T, top_k], the sequence's tokens in order

        return fn

    handles = [m.register_forward_hook(hook(i)) for i, (_, m) in enumerate(routers)]
    n_tok = 0
    try:
        for n, s in enumerate(seqs):  # one at a time: no padding tokens in the counts
            ids, mask = left_pad([s], 0)
            model(input_ids=ids, attention_mask=mask)
            if counts is None:
                counts = torch.zeros(len(routers), num_experts(model))
            start = starts[n] if starts else 0
            for i in range(len(routers)):
                counts[i] += torch.bincount(seen[i][start:].flatten(), minlength=counts.shape[1]).float()
            n_tok += len(s) - start
    finally:
        for h in handles:
            h.remove()
    return counts / max(1, n_tok)


@GUARDS.register("expert_steering")
@dataclass
class ExpertSteering(Guard):
    name = "expert_steering"
    description = "switch refusal-related MoE experts off or on through router hooks (MoTE / SteerMoE)"
    k: int = 2
    mode: str = "off"  # off: lower refusal; on: raise it
    select: str = "top"  # top: the highest-scoring experts; random: k drawn with seed (the control)
    seed: int = 0
    max_new_tokens: int = 32
    tokens: str = "reply"  # which tokens' routing is scored: reply, prompt or decision (the last prompt token)
    score: str = "ablation"  # ablation: candidates ranked by switching each off alone; frequency: routing alone
    candidates: int = 64  # ablation: the experts tried, those with the largest |frequency difference|

    def __post_init__(self):
        if (
            self.mode not in ("off", "on")
            or self.select not in ("top", "random")
            or self.k < 1
            or self.tokens not in ("reply", "prompt", "decision", "paired")
            or self.score not in ("ablation", "frequency")
            or self.candidates < self.k
        ):
            raise UsageError(
                "expert_steering: mode off|on, select top|random, tokens reply|prompt|decision|paired, "
                "score ablation|frequency, k >= 1, candidates >= k"
            )
        self._scores = None  # [L, E]
        self._chosen: dict[int, list[int]] = {}

    @classmethod
    def switching(cls, experts: dict[int, list[int]], mode: str = "off") -> "ExpertSteering":
        """A guard that switches exactly `experts` ({layer: [expert]}) off or on, with no fit (probes, controls)."""
        k = sum(map(len, experts.values()))
        guard = cls(k=k, mode=mode, score="frequency", candidates=k)
        guard._chosen = {layer: list(es) for layer, es in experts.items()}
        return guard

    def choose(self) -> dict[int, list[int]]:
        L, E = self._scores.shape
        flat = list(range(L * E))
        if self.select == "top":
            picked = sorted(flat, key=lambda i: -float(self._scores.flatten()[i]))[: self.k]
        else:
            picked = random.Random(self.seed).sample(flat, self.k)
        out: dict[int, list[int]] = {}
        for i in picked:
            out.setdefault(i // E, []).append(i % E)
        return out

    def attach(self, model, tok):
        if not router_modules(model):
            raise UsageError(f"guard expert_steering: this {type(model).__name__} has no mixture-of-experts routers")
        if self._scores is not None:
            self._chosen = self.choose()

    def edit_routing(self, layer, router_logits):
        experts = self._chosen.get(layer)
        if not experts:
            return router_logits
        out = router_logits.clone()
        if self.mode == "off":
            out[..., experts] = float("-inf")
        else:
            out[..., experts] = out[..., experts] + 1e4
        return out

    @classmethod
    def fit(cls, model, tok, inputs, **options):
        guard = cls(**options)
        if not router_modules(model):
            raise UsageError(f"expert_steering: this {type(model).__name__} has no mixture-of-experts routers")
        rows = inputs.get("policy_train") or []
        top_k = int(getattr(text_config(model), "num_experts_per_tok", 2))
        prompts = [r["prompt"] for r in rows]
        judged = None
        if guard.tokens != "paired" or guard.score == "ablation":
            judged = judged_replies(model, tok, prompts, guard.max_new_tokens)
            _require_contrast(judged[1])
        f_ref, f_com = (
            _paired_frequencies(model, tok, rows, top_k)
            if guard.tokens == "paired"
            else _judged_frequencies(model, tok, prompts, *judged, top_k, guard.tokens)
        )
        guard._scores = f_ref - f_com  # [L, E] activation differences
        if guard.k > guard._scores.numel():
            raise UsageError(f"expert_steering: k={guard.k} but the model has {guard._scores.numel()} experts")
        if guard.score == "ablation" and guard.select == "top":  # a random choice never reads the scores
            guard._scores = ablation_scores(model, tok, prompts, *judged, guard._scores, guard.candidates)
        guard._chosen = guard.choose()
        return guard

    def report(self, model, tok, inputs):
        chosen = ";".join(f"{layer}:{e}" for layer, es in sorted(self._chosen.items()) for e in es)
        return {"experts": float(self.k), "score": self.score, "chosen": chosen}

    def tensors(self):
        return {"scores": self._scores}

    def load_tensors(self, tensors):
        self._scores = tensors["scores"]
        self._chosen = self.choose()


def _judged_frequencies(
    model, tok, prompts: list[str], replies: list[str], refused: list[bool], top_k: int, tokens: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing frequencies on the prompts the model refuses and on those it answers (its own greedy `replies`,
    judged), counted over `tokens`: reply, prompt or decision (see the module docstring)."""
    from obliviate.models.encode import prompt_ids

    seqs = [prompt_ids(tok, p) for p in prompts]
    if tokens == "reply":  # prompt + the reply's tokens; only the reply's are counted
        starts = [len(s) for s in seqs]
        seqs = [s + tok(r, add_special_tokens=False)["input_ids"] for s, r in zip(seqs, replies)]
    elif tokens == "decision":
        starts = [len(s) - 1 for s in seqs]
    else:
        starts = [0] * len(seqs)
    keep = [i for i, s in enumerate(seqs) if len(s) > starts[i]]

    def side(want: bool) -> torch.Tensor:
        chosen = [i for i in keep if refused[i] == want]
        return routing_frequency(model, [seqs[i] for i in chosen], top_k, [starts[i] for i in chosen])

    return side(True), side(False)


def _require_contrast(refused: list[bool]) -> None:
    if len(set(refused)) < 2:
        raise UsageError("expert_steering: the model refused all or none of the training prompts; no contrast")


@torch.no_grad()
def reply_loglik(
    model, tok, prompts: list[str], replies: list[str], off: dict[int, list[int]] | None = None, batch_size: int = 32
) -> torch.Tensor:
    """[N]: mean per-token log-likelihood of each reply after its prompt (chat template, teacher-forced), with the
    experts in `off` ({layer: [expert]}) switched off through the router hooks."""
    from obliviate.engine.hooks import routing_hooks
    from obliviate.models.encode import collate, encode_pair, sequence_logp

    probe = [ExpertSteering.switching(off)] if off else []
    pairs = [encode_pair(tok, p, r) for p, r in zip(prompts, replies)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out = []
    with routing_hooks(model, probe):
        for i in range(0, len(pairs), batch_size):
            batch = {k: v.to(device) for k, v in collate(pairs[i : i + batch_size], pad).items()}
            total, n = sequence_logp(model, batch)
            out.append((total / n.clamp(min=1)).float().cpu())
    return torch.cat(out)


def ablation_scores(
    model, tok, prompts: list[str], replies: list[str], refused: list[bool], activation: torch.Tensor, candidates: int
) -> torch.Tensor:
    """[L, E]: for the `candidates` experts with the largest |activation difference|, each switched off alone, the
    drop in mean per-token log-likelihood of the model's own replies averaged over refused prompts minus the same
    over answered ones (the refusal it removes beyond the general damage); -inf for experts not tried."""
    keep = [i for i, r in enumerate(replies) if r.strip()]
    prompts, replies = [prompts[i] for i in keep], [replies[i] for i in keep]
    _require_contrast([refused[i] for i in keep])  # dropping empty replies may remove one side
    ref = torch.tensor([refused[i] for i in keep])
    L, E = activation.shape
    tried = activation.abs().flatten().argsort(descending=True)[:candidates].tolist()
    base = reply_loglik(model, tok, prompts, replies)
    scores = torch.full((L, E), float("-inf"))
    with progress_bar(len(tried), "expert_steering: switching experts off", enabled=sys.stderr.isatty()) as bar:
        for i in tried:  # one teacher-forced pass over the training replies per candidate
            drop = base - reply_loglik(model, tok, prompts, replies, {i // E: [i % E]})
            scores[i // E, i % E] = drop[ref].mean() - drop[~ref].mean()
            bar.advance()
    return scores


def _paired_frequencies(model, tok, rows: list[dict], top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SteerMoE's paired contrast: each prompt that has both a refusal and a compliance answer (`refusal`, `answer`)
    is read twice, teacher-forced with each; the routing of the answer tokens is counted per side. The prompts are
    the same on both sides, so only the behaviour differs, not the topic."""
    from obliviate.models.encode import prompt_ids

    pairs = [r for r in rows if r.get("refusal") and r.get("answer")]
    if not pairs:
        raise UsageError("expert_steering tokens=paired: no training row has both a 'refusal' and an 'answer'")
    seqs = [prompt_ids(tok, r["prompt"]) for r in pairs]
    starts = [len(s) for s in seqs]

    def side(key):
        return routing_frequency(
            model, [s + tok(r[key], add_special_tokens=False)["input_ids"] for s, r in zip(seqs, pairs)], top_k, starts
        )

    return side("refusal"), side("answer")
