"""How an invocation ends early: Ctrl-C, SIGTERM and SIGHUP all unwind as one KeyboardInterrupt.

The code that opened runs catches it and ends them KILLED. Whatever arrives after the first
signal is ignored, so that clean-up finishes: a second Ctrl-C 20-100 ms after the first used to
cut it short with a traceback and leave runs RUNNING.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class _State:
    ending: bool = False  # the first signal has been raised: clean-up is under way
    deferring: int = 0  # nesting depth of `deferred()` blocks
    pending: int | None = None  # a signal that arrived inside a `deferred()` block


_state = _State()


def install() -> None:
    """Handle the ending signals, except those ignored from the start (`nohup` ignores
    SIGHUP, a shell's background job SIGINT): those stay ignored."""
    _state.ending, _state.deferring, _state.pending = False, 0, None
    for signum in ENDING_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _state.ending:
        return  # arrived just as the first was raised: clean-up finishes whatever arrives
    if _state.deferring:
        _state.pending = signum
        return
    _end(signum)


def _end(signum: int) -> None:
    _state.ending = True
    # Ignored from now on, not handled: Python puts back the default action of the signals it
    # handles as it exits, and a Ctrl-C in that moment ended a clean exit as "killed" (-2).
    for other in ENDING_SIGNALS:
        if signal.getsignal(other) is not signal.SIG_IGN:
            signal.signal(other, signal.SIG_IGN)
    if signum == signal.SIGHUP:
        _leave_terminal()
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _leave_terminal() -> None:
    """After a hang-up the terminal (or the pipe to it) is gone: point stdout and stderr at
    /dev/null, unless they are files, so that a failed write cannot cut clean-up short."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.dup2(devnull, fd)
    os.close(devnull)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold an ending signal until the block is done: a store write cut half-way would leave
    its transaction holding the store's lock, and clean-up would then wait on it."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
        if not _state.deferring and _state.pending is not None and not _state.ending:
            _end(_state.pending)
