"""``shutdown_on_signals``: SIGINT and SIGTERM become a graceful, cancellation-based shutdown
(the supervisor leaves cleanly) with the conventional exit status."""

from __future__ import annotations

import signal

import pytest
import trio

import rakka_trio as rk
from rakka_trio._signals import SignalShutdown, shutdown_on_signals

from .control_helpers import supervisor_config

pytestmark = pytest.mark.trio


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_a_signal_cancels_the_block_and_the_supervisor_leaves(
    sig: signal.Signals, status: int
) -> None:
    left: list[bool] = []
    with trio.fail_after(10):
        async with shutdown_on_signals() as shutdown:
            assert not shutdown.requested and shutdown.exit_code is None
            async with rk.open_supervisor(supervisor_config("a")) as sup:
                try:
                    signal.raise_signal(sig)
                    await trio.sleep_forever()
                finally:
                    left.append(True)
            pytest.fail("the block went on after the signal")  # pragma: no cover
    assert left == [True]
    assert shutdown.signal is sig and shutdown.requested and shutdown.exit_code == status
    assert sup.statistics().endpoints  # it ran, and its exit completed without error


async def test_later_signals_are_absorbed_while_the_block_unwinds() -> None:
    with trio.fail_after(10):
        async with shutdown_on_signals() as shutdown:
            try:
                signal.raise_signal(signal.SIGINT)
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    # A second Ctrl-C during cleanup: no KeyboardInterrupt.
                    signal.raise_signal(signal.SIGINT)
                    signal.raise_signal(signal.SIGTERM)
                    await trio.sleep(0.05)
    assert shutdown.signal is signal.SIGINT and shutdown.signals_seen == 3


async def test_without_cancel_the_block_decides() -> None:
    with trio.fail_after(10):
        async with shutdown_on_signals(signal.SIGTERM, cancel=False) as shutdown:
            signal.raise_signal(signal.SIGTERM)
            assert await shutdown.wait() is signal.SIGTERM
            await trio.sleep(0.01)  # not cancelled: still running
            reached = True
    assert reached and shutdown.exit_code == 143


async def test_an_outer_cancellation_is_not_swallowed() -> None:
    with trio.fail_after(10):
        with trio.CancelScope() as outer:
            async with shutdown_on_signals():
                outer.cancel()
                await trio.sleep_forever()
            pytest.fail("the outer cancellation was swallowed")  # pragma: no cover
        assert outer.cancelled_caught


async def test_the_previous_handlers_are_back_afterwards() -> None:
    before = signal.getsignal(signal.SIGTERM)
    async with shutdown_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


async def test_no_signal_means_no_exit_code() -> None:
    async with shutdown_on_signals() as shutdown:
        await trio.lowlevel.checkpoint()
    assert isinstance(shutdown, SignalShutdown)
    assert shutdown.signal is None and shutdown.exit_code is None
    assert "signal=None" in repr(shutdown)
