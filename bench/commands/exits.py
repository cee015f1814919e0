"""The exit statuses every command shares (a module of its own, so commands import no CLI)."""

EXIT_USAGE = 2  # bad input: one line on stderr
EXIT_FAILED = 1  # a cell crashed, a parity check failed, a reproduction differs
EXIT_INTERRUPTED = 130
