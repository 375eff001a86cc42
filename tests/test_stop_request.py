"""Signals as stops: SIGTERM waits for the step boundary inside training, SIGINT stops at once, and a
second signal never interrupts the clean-up of the first."""
from __future__ import annotations

import os
import signal

import pytest

from study.runtime import stop_request


@pytest.fixture
def handlers():
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    stop_request.install()
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    stop_request.clear()


@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGTERM)])
def test_a_second_signal_does_not_cut_the_first_ones_clean_up_short(handlers, first, second):
    """Ctrl-C reaches a worker as SIGINT, then as its driver's SIGTERM: the second used to raise inside the
    clean-up of the first (closing the MLflow run) and leave the run RUNNING."""
    cleaned = False
    with pytest.raises(KeyboardInterrupt):
        try:
            os.kill(os.getpid(), first)
        finally:
            os.kill(os.getpid(), second)  # lands in the clean-up
            cleaned = True
    assert cleaned and stop_request.requested()


def test_sigterm_in_training_waits_for_the_step_and_sigint_does_not(handlers):
    with stop_request.polite():
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop_request.requested()  # no exception: the loop checkpoints at its step boundary
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
