"""The one exception type for errors a user can cause (bad input, missing data, bad store)."""


class BenchError(Exception):
    """A problem the user can fix; the message names the input and the fix, on one line."""


class StoreUnwritable(BenchError):
    """The tracking store stayed locked or read-only past the wait (MLP_BENCH_STORE_RETRY_S)
    once training had started: what it could not take is kept on disk (exit 1, not 2)."""


def one_line(text: object) -> str:
    """Collapse whitespace so that an error message stays on one line."""
    return " ".join(str(text).split())
