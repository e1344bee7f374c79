"""The second modality: concept erasure in text-to-image diffusion models, on a built-in image world.

`world` renders the deterministic image world (objects x colours x styles x backgrounds, with captions, erasure
splits and benign look-alike prompts); `classifiers` trains the small per-factor CNNs that score generations.
Submodules import torch lazily where they can; importing this package imports nothing heavy.
"""
