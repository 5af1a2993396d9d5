"""Holding Ctrl-C (SIGINT) back across a few statements that must happen together.

Python raises KeyboardInterrupt between bytecodes, so one that arrives while an in-place
kernel runs surfaces right after it returns: after the write, before the statement that
records it. ``interrupts_held`` closes that gap without a backup copy of what the kernel
writes: inside it a SIGINT is only noted; on leaving, the previous handler is put back and
the signal raised again, so it is handled exactly as it would have been, just later.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

__all__ = ["interrupts_held"]


@contextmanager
def interrupts_held():
    """Defer SIGINT until the block ends (then re-raise it to the previous handler).

    Only the main thread receives signals, and only there can a handler be set: elsewhere
    (and where the previous handler was not installed from Python, so it could not be put
    back) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        # None: a handler not installed from Python, which could not be put back afterwards
        yield
        return
    received = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except (ValueError, OSError):  # e.g. an embedding interpreter that owns its signals
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)
