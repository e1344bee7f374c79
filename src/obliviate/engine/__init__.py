"""Training loop, decode loop with its guard hooks, teacher-forced evaluation, the Method base."""
