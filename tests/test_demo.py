"""The demo runs its scripted incident end to end (under virtual time) and reports it."""

from __future__ import annotations

import io

import pytest
import trio
import trio.testing
from rich.console import Console

from rakka_trio._demo import demo_main

pytestmark = pytest.mark.trio


async def test_demo_trips_and_recovers(mock_clock: trio.testing.MockClock) -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    report = await demo_main(duration=8.0, seed=1, concurrency=8, console=console)
    text = out.getvalue()
    assert report.trips >= 1
    assert report.recoveries >= 1
    # Failover kept users served through the storm: failures are only the backup's 429s.
    assert report.served > 10 * report.failed
    assert report.outcomes["primary"]["circuit_open"] > 0
    assert report.outcomes["backup"].get("429", 0) > 0
    assert "primary: closed -> open (failure_threshold" in text
    assert "half_open -> closed (probe_succeeded)" in text
    assert "Outcomes by endpoint" in text
