"""`python -m obliviate.cli` (torchrun and accelerate launch start the CLI this way)."""

from obliviate.cli.app import main

main()
