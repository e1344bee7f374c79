"""The refusal wing: methods, the align runner, evaluation, calibration, public prompt data."""
