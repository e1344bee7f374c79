"""The layer order of obliviate's folders: a module may import from its own folder or from a folder listed
before its own, never from one listed after it (`tests/test_layers.py` checks every import, function-local ones
included). The root package (`obliviate/__init__.py`, the Python API) sits above everything."""

LAYERS: tuple[str, ...] = (
    "core",  # errors, registry, options, progress, outputs, checkpoints, JSON, timer, pool
    "data",  # readers, schemas, the built-in world, prompt sets, shipped pools
    "models",  # load, convert, encode, anatomy, tiny models, prompt formats, control tokens
    "metrics",  # TOFU, MIA and memorisation metrics
    "runs",  # the run store and the results.json schema
    "report",  # Markdown and HTML reports
    "engine",  # training loop, decode loop and its guard hooks, teacher-forced evaluation, Method base
    "judges",  # refusal judges: keyword, embedding, LLM
    "guards",  # inference-time guards
    "benchmarks",  # TOFU / MUSE / WMDP layouts and scorers
    "unlearning",  # unlearning methods, runs, evaluation, sweeps, the bench
    "refusal",  # refusal methods, the align runner, refusal evaluation, calibration, public prompt data
    "audit",  # the audit runner, its inputs, the attacks
    "diffusion",  # the text-to-image wing
    "demos",  # the demos
    "serve",  # the OpenAI-compatible server
    "cli",  # the command line
)


def layer_of(module: str) -> int:
    """Rank of a dotted module name under `obliviate`; the root package ranks above every folder."""
    parts = module.split(".")
    if parts[0] != "obliviate":
        raise ValueError(f"not an obliviate module: {module}")
    if len(parts) == 1:
        return len(LAYERS)
    if parts[1] not in LAYERS:
        raise ValueError(f"{module}: folder {parts[1]!r} is not in obliviate.core.layers.LAYERS")
    return LAYERS.index(parts[1])
