"""Inference-time guards: `base` holds the registry and the guard directory format; one file per guard."""
