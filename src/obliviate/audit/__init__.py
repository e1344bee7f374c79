"""The audit: the runner, its inputs and the attacks."""
