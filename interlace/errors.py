"""Errors that mean "bad input": the CLI prints them as one line and exits with status 2."""


class InterlaceError(ValueError):
    """Bad input from the user (a path, a field, a file). The message names the problem and the fix."""
