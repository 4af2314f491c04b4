"""Shared fixtures."""

from __future__ import annotations

import pytest
import trio
import trio.testing


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    """Virtual time that jumps straight to the next deadline whenever every task is idle.

    pytest-trio picks up a fixture named ``mock_clock`` as the run's clock.
    """
    return trio.testing.MockClock(autojump_threshold=0)
