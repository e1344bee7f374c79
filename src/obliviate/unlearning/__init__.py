"""The unlearning wing: methods, one run, evaluation, sweeps and the method bench."""
