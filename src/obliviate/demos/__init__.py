"""The demos: world (unlearning), refusal, real model, diffusion, MUSE."""
