"""Audited models served at an endpoint (`audit openai:URL`, `--oracle` / `--target openai:URL`): an
OpenAI-compatible server (`vllm serve`, `obliviate serve`, ...) spoken to by `obliviate.models.remote`.

An endpoint answers with text (and, where it offers them, log-probabilities and raw-text completions), so only the
black-box attacks run against it: those whose `on_endpoint` says nothing against it and whose `endpoint_needs` the
endpoint offers (direct requests, tense, templates, best-of-N, decoding, many-shot, in-context, PAIR and TAP with an
`--attacker-model`, prefill and random search with the served model's `--tokenizer`, random search where the
endpoint returns logprobs, the completion attack where it has /v1/completions). Every other planned attack is skipped
and listed with its reason: white-box ones need the weights, logits or activations. Guards and prompt formats act on
a local decode loop, so they apply to local models only.
"""

from __future__ import annotations

from pathlib import Path

from obliviate.core.errors import UsageError
from obliviate.models.remote import RemoteModel, is_remote, load_tokenizer


def local_roles(roles: dict[str, str]) -> dict[str, str]:
    """The roles (model, oracle, target) that are model directories, not endpoints."""
    return {role: path for role, path in roles.items() if not is_remote(path)}


def open_endpoints(
    roles: dict[str, str],
    *,
    served_model: str | None = None,
    api_key_env: str | None = None,
    concurrency: int = 4,
    tokenizer: str | Path | None = None,
    guards=(),
    prompt_format=None,
) -> tuple[dict[str, RemoteModel], object | None]:
    """({role: RemoteModel}, the served model's tokenizer or None): each endpoint checked (reachable, key accepted,
    model served) before anything is written. Options for endpoints without one are a UsageError, and so are guards
    or a prompt format on an audited endpoint."""
    remote = {role: spec for role, spec in roles.items() if is_remote(spec)}
    if not remote:
        if served_model or api_key_env or tokenizer:
            raise UsageError("--served-model, --api-key-env and --tokenizer apply to an openai:URL model")
        return {}, None
    if "model" in remote and guards:
        raise UsageError("--guard applies to a local model: an endpoint's replies come from its own server")
    if prompt_format is not None and (prompt_format.force or prompt_format.given):
        raise UsageError("--no-chat-template and --prompt-template apply to local models: an endpoint uses its own")
    endpoints = {role: RemoteModel(spec, served_model, api_key_env, concurrency) for role, spec in remote.items()}
    return endpoints, load_tokenizer(tokenizer) if tokenizer else None


NEEDS = {
    "logprobs": "returns no log-probabilities (chat logprobs / top_logprobs)",
    "completions": "has no raw-text completions (/v1/completions)",
}


def endpoint_skips(todo: dict, endpoints: dict, tokenizer: bool) -> dict[str, str]:
    """{attack: why it does not run} for the planned attacks that cannot run on an endpoint, when a role is one: the
    attack's own reason (`on_endpoint`), else a feature it needs (`endpoint_needs`) that an endpoint lacks, asked of
    each endpoint once (`RemoteModel.supports`)."""
    if not endpoints:
        return {}
    name_of = lambda role: "the audited model" if role == "model" else f"the {role}"  # noqa: E731
    who = " and ".join(map(name_of, endpoints))
    verb = "are endpoints" if len(endpoints) > 1 else "is an endpoint"
    out = {}
    for name, attack in todo.items():
        if why := attack.on_endpoint(tokenizer):
            out[name] = f"{who} {verb}; {why}"
            continue
        for need in attack.endpoint_needs:
            lacking = [role for role, e in endpoints.items() if not e.supports(need)]
            if lacking:
                out[name] = f"{' and '.join(map(name_of, lacking))} at {endpoints[lacking[0]].url} {NEEDS[need]}"
                break
    return out
