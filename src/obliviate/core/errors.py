"""Errors that mean "the user gave bad input": the CLI turns them into exit code 2 and one line."""


class UsageError(Exception):
    """Bad input or usage (missing file, malformed line, unknown name...). Exit code 2, no traceback."""


class TrainingDiverged(UsageError):
    """The loss became NaN or inf; nothing was saved. Usually a learning rate that is too high."""
