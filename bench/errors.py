"""The one exception type for errors a user can cause (bad input, missing data, bad store)."""


class BenchError(Exception):
    """A problem the user can fix; the message names the input and the fix, on one line."""
