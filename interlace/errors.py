"""Errors that mean "bad input", or "not now": the CLI prints them as one line and exits with status 2
(InterlaceError: another attempt meets the same input, so the operator does not retry it) or 75
(TransientError, EX_TEMPFAIL: the network, the Hub, a service; the operator retries it)."""


class InterlaceError(ValueError):
    """Bad input from the user (a path, a field, a file). The message names the problem and the fix."""


class TransientError(InterlaceError):
    """A failure another attempt may not meet (the network, the Hub's rate limits or a server error, a
    store that is down). The message names what failed; the CLI exits 75 so the operator retries."""


EXIT_REFUSED = 2  # InterlaceError: the inputs are refused; not retried
EXIT_TRANSIENT = 75  # TransientError (sysexits' EX_TEMPFAIL): retried
