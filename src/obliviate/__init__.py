"""obliviate: make a generative model forget what it must, refuse what it should, and prove both under attack.

The Python API: the functions the commands call, each writing what its command writes and returning it
(docs/python.md walks through them on the built-in world).

    from obliviate import unlearn, evaluate, align, refusal_eval, run_audit, erase, fit_guard, load_guard

They are imported on first use, so `import obliviate` stays light (no torch).
"""

from obliviate.core.version import __version__ as __version__  # re-exported

__all__ = ["unlearn", "evaluate", "align", "refusal_eval", "run_audit", "erase", "fit_guard", "load_guard"]


def __getattr__(name: str):
    if name == "unlearn":
        from obliviate.unlearning.run import run_unlearn as unlearn

        return unlearn
    if name == "evaluate":
        from obliviate.unlearning.evaluate import run_eval as evaluate

        return evaluate
    if name == "align":
        from obliviate.refusal.run import run_align as align

        return align
    if name == "refusal_eval":
        from obliviate.refusal.run import run_refusal_eval as refusal_eval

        return refusal_eval
    if name == "run_audit":
        from obliviate.audit.runner import run_audit

        return run_audit
    if name == "erase":
        from obliviate.diffusion.run import erase

        return erase
    if name == "fit_guard":
        from obliviate.audit.guard_fit import fit_guard

        return fit_guard
    if name == "load_guard":
        from obliviate.guards.base import load_guard

        return load_guard
    raise AttributeError(f"module 'obliviate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
