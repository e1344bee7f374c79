"""Attacks on concept erasure in text-to-image models (`obliviate audit --suite diffusion`), one file each."""
