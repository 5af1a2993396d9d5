"""core.interrupts.interrupts_held: a SIGINT inside is delivered, once, to the handler that was
there before, when the block ends; the handler is always put back."""
import signal
import threading

import pytest

from obert_kernels.core.interrupts import interrupts_held

pytestmark = pytest.mark.usefixtures("python_sigint")


def test_a_sigint_inside_is_raised_when_the_block_ends():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
            steps.append("after the signal")
    assert steps == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_previous_handler_gets_it_and_is_put_back():
    got = []

    def handler(signum, frame):
        got.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            assert got == []
        assert got == [signal.SIGINT]  # held signals coalesce, as pending signals do
        assert signal.getsignal(signal.SIGINT) is handler
        with interrupts_held():
            pass
        assert got == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_it_changes_nothing():
    seen = []

    def body():
        with interrupts_held():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [signal.default_int_handler]
