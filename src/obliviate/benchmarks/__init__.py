"""Data layouts and scorers of public benchmarks: TOFU, MUSE, WMDP, TOFU logs."""
