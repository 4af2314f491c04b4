"""Snapshot of the main screen: a fixed scene (frozen clocks, UTC, a fake server) rendered by
Textual, exported as SVG, read back into text lines and compared with
``tests/fixtures/tui/main_screen.txt``.

After an intended change of the screen, regenerate the golden file with
``RAKKA_UPDATE_SNAPSHOTS=1 uv run pytest tests/test_tui_snapshot.py`` and review the diff.
With ``pytest-textual-snapshot`` installed, :func:`test_main_screen_snap_compare` also
compares the SVG pixel-for-pixel in that plugin's own format.
"""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot

from rakka_trio._control import _protocol as proto
from rakka_trio_tui import Backoff, RakkaTui
from rakka_trio_tui._text import MISSING as NA

from .tui_helpers import (
    FakeClock,
    FakeServer,
    connected,
    endpoint,
    run_app,
    screenshot_lines,
    transition,
    wait_until,
)

GOLDEN = Path(__file__).parent / "fixtures" / "tui" / "main_screen.txt"
SIZE = (160, 26)
WALL = 1_760_000_000.0  # 2025-10-09 08:53:20 UTC


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Log times in UTC, whatever the machine's zone."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


# A storm on the backup: 5xx attempts, its traffic moving to the primary (the incident view).
PRIMARY_SERIES = [0] * 18 + [8, 9, 10, 11, 12, 12, 13, 14, 15, 15, 16, 9]
BACKUP_SERIES = [0] * 18 + [12, 12, 11, 12, 10, 6, 3, 1, 0, 0, 0, 0]
BACKUP_ERRORS = [0] * 18 + [0, 0, 1, 3, 6, 6, 3, 1, 0, 0, 0, 0]


def primary_recent() -> proto.RecentState:
    return proto.RecentState(
        window=10.0,
        bucket=10.0,
        requests={"ok": 15.2, "cancelled": 0.1},
        attempts={"ok": 15.2, "429": 0.3},
        retries=0.3,
        error_rate=0.0,
        p50=0.21,
        p95=0.84,
        p99=1.62,
        requests_series=PRIMARY_SERIES,
        errors_series=[0] * 30,
    )


def backup_recent() -> proto.RecentState:
    return proto.RecentState(
        window=10.0,
        bucket=10.0,
        requests={"5xx": 0.4, "circuit_open": 3.1},
        attempts={"5xx": 1.2},
        retries=0.8,
        error_rate=1.0,
        p50=None,
        p95=None,
        p99=None,
        requests_series=BACKUP_SERIES,
        errors_series=BACKUP_ERRORS,
    )


def limits(used: float, *, paused_for: float | None = None) -> proto.LimiterState:
    return proto.LimiterState(
        limits=[
            proto.LimitState(name="rpm", used=used, limit=10_000, configured=10_000),
            proto.LimitState(name="tpm", used=0.97, limit=40_000, configured=2_000_000),
        ],
        paused_for=paused_for,
        waiting=0,
    )


def chat_deployment() -> proto.DeploymentState:
    return proto.DeploymentState(
        name="chat",
        strategy="ordered",
        endpoints=["anthropic-backup", "openai-primary"],
        serving=1,
        window=10.0,
        bucket=10.0,
        requests={"ok": 15.2, "circuit_open": 0.1},
        success_rate=0.993,
        fallbacks=[
            proto.FallbackState(
                from_endpoint="anthropic-backup",
                to="openai-primary",
                cause="CircuitOpen",
                per_second=3.1,
                total=96,
            ),
            proto.FallbackState(
                from_endpoint="anthropic-backup",
                to="openai-primary",
                cause="ServerError",
                per_second=0.4,
                total=31,
            ),
        ],
        requests_series=[a + b for a, b in zip(PRIMARY_SERIES, BACKUP_SERIES, strict=True)],
        errors_series=[0] * 29 + [1],
    )


def scene() -> tuple[RakkaTui, FakeServer]:
    """Five endpoints, one in each breaker state, with every column filled somewhere, and a
    deployment whose traffic moved from the tripped backup to the primary."""
    server = FakeServer(
        deployments=(chat_deployment(),),
        endpoints=(
            endpoint(
                "openai-primary",
                provider="openai",
                failures=2,
                successes=812,
                failure_rate=0.01,
                calls_in_window=100,
                limiter_utilization=0.42,
                in_flight=6,
                latency_p95=0.84,
                recent=primary_recent(),
                limiter=limits(0.42),
            ),
            endpoint(
                "anthropic-backup",
                provider="anthropic",
                state="open",
                consecutive_failures=5,
                failures=9,
                failure_rate=0.55,
                calls_in_window=20,
                trips=1,
                rejected=37,
                open_until_in=25.0,
                limiter_utilization=0.97,
                in_flight=0,
                latency_p95=2.31,
                recent=backup_recent(),
                limiter=limits(0.1, paused_for=2.5),
            ),
            endpoint("gemini-flash", provider="gemini", state="half_open", trips=2),
            endpoint(
                "vllm-local",
                provider="openai",
                state="forced_open",
                rejected=120,
                open_until_in=300.0,
                forced_reason="incident-42",
                forced_by="tui@127.0.0.1:50312",
            ),
            endpoint(
                "ollama-dev",
                provider="openai",
                state="disabled",
                until_reset=True,
                forced_reason="probe flaps",
                forced_by="cli:alice@127.0.0.1:50400",
            ),
        ),
    )
    app = RakkaTui(
        "ws://127.0.0.1:8765",
        connect=server.connect,
        backoff=Backoff(initial=0.02, maximum=0.05),
        clock=FakeClock(),
        wall_clock=lambda: WALL,
    )
    return app, server


async def settle(pilot: Pilot[int], app: RakkaTui, server: FakeServer) -> None:
    """Connect and play a short incident into the event log."""
    await connected(pilot, app)
    server.push(
        transition(
            "anthropic-backup",
            "closed",
            "open",
            wall=WALL + 1.5,
            consecutive_failures=5,
            failure_rate=0.55,
            calls_in_window=20,
            trips=1,
            open_until_in=25.0,
        ),
        proto.CommandFrame(
            wall=WALL + 2.25,
            endpoint="vllm-local",
            command="force_open",
            actor="tui@127.0.0.1:50312",
            reason="incident-42",
            duration=300.0,
        ),
    )
    await wait_until(pilot, lambda: "force_open" in _log(app), "the log lines")
    await pilot.pause()


def _log(app: RakkaTui) -> str:
    from textual.widgets import RichLog

    return "\n".join(strip.text for strip in app.query_one("#log", RichLog).lines)


def test_main_screen_snapshot() -> None:
    app, server = scene()
    shots: list[str] = []

    async def scenario(pilot: Pilot[int]) -> None:
        await settle(pilot, app, server)
        shots.append(app.export_screenshot())

    run_app(app, scenario, size=SIZE)
    (svg,) = shots

    # Structure: a well-formed SVG with one clipped text line per terminal row.
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    lines = screenshot_lines(svg, SIZE[0])
    assert len(lines) == SIZE[1]
    assert sum(1 for _ in root.iter("{http://www.w3.org/2000/svg}text")) > SIZE[1]

    text = "\n".join(lines) + "\n"
    if os.environ.get("RAKKA_UPDATE_SNAPSHOTS"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    expected = GOLDEN.read_text(encoding="utf-8")
    assert text == expected, (
        "the main screen changed; if intended, regenerate with RAKKA_UPDATE_SNAPSHOTS=1\n" + text
    )


def test_main_screen_snapshot_content() -> None:
    """The same scene, asserted piece by piece (readable failures, independent of layout)."""
    app, server = scene()
    lines: list[str] = []

    async def scenario(pilot: Pilot[int]) -> None:
        await settle(pilot, app, server)
        lines.extend(screenshot_lines(app.export_screenshot(), SIZE[0]))

    run_app(app, scenario, size=SIZE)
    screen = "\n".join(lines)
    assert lines[0].startswith(" rakka-trio  ws://127.0.0.1:8765  ● connected  as operator")
    header = lines[1].split()
    assert header[:6] == ["ENDPOINT", "STATE", "FAILS", "FAIL", "RATE", "ERR%"]
    assert header[-5:] == ["LIMIT", "IN-FLIGHT", "P95", "REJECTED", "NOTE"]
    assert "TREND" in header  # the request sparkline

    def row(name: str) -> list[str]:
        return next(line for line in lines if line.split()[:1] == [name]).split()

    # The recent error rate and the trend: the backup fails every request, the primary
    # carries the traffic that moved; the limiter names the busiest limit.
    assert row("openai-primary")[1:] == [
        "closed", "0", "(2)", "1%", "of", "100", "0%", "▆▆▇▇███▅", NA, "TPM", "97%↓",
        "6", "840ms", "0",
    ]  # fmt: skip
    assert row("anthropic-backup")[1:] == [
        "open", "5", "(9)", "55%", "of", "20", "100%", "█▅▃▂▁▁▁▁", "25s", "paused", "3s",
        "0", "2.31s", "37",
    ]  # fmt: skip
    assert row("gemini-flash")[1:] == ["half_open", "0", NA, NA, NA, NA, NA, NA, NA, "0"]
    assert row("vllm-local")[1:] == [
        "forced_open", "0", NA, NA, NA, "5m00s", NA, NA, NA, "120",
        "incident-42", "by", "tui@127.0.0.1:50312",
    ]  # fmt: skip
    assert row("ollama-dev")[1:5] == ["disabled", "0", NA, NA]
    # The selected endpoint's breakdown by cause, and the deployment panel.
    assert "openai-primary  15.3 req/s  errors 0%  trips 0  ▅▅▅▆▆▆▇▇███▅" in screen
    assert "attempts/s ok 15.2  429 0.3  retries/s 0.3  p50/p95/p99 210ms/840ms/1.62s" in screen
    assert "TPM 97% of 40000/min (provider-lowered from 2000000)" in screen
    assert "deployment chat  serving 1/2  success 99%  15.3 req/s" in screen
    assert "fallbacks anthropic-backup→openai-primary CircuitOpen 3.1/s (96)" in screen
    assert "08:53:21.500  anthropic-backup  closed → open  (failure_threshold)" in screen
    assert "08:53:22.250  vllm-local  force_open by tui@127.0.0.1:50312 for 5m00s" in screen
    assert "f Force open" in lines[-1] and "q Quit" in lines[-1]


def test_main_screen_snap_compare(request: pytest.FixtureRequest) -> None:
    """pytest-textual-snapshot's SVG comparison, when that plugin is installed."""
    pytest.importorskip("pytest_textual_snapshot")
    snap_compare = request.getfixturevalue("snap_compare")
    app, server = scene()

    async def run_before(pilot: Pilot[int]) -> None:
        await settle(pilot, app, server)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


# --- the sizes operators actually have --------------------------------------------------------

SIZES = [(80, 24), (140, 40)]


def _golden(size: tuple[int, int]) -> Path:
    return GOLDEN.with_name(f"main_screen_{size[0]}x{size[1]}.txt")


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_screen_fits_common_terminals(size: tuple[int, int]) -> None:
    """At 80x24 the columns that matter in an incident stay on screen (the rest collapse by
    priority); at 140x40 the NOTE column is whole."""
    app, server = scene()
    lines: list[str] = []
    shown: list[str] = []

    async def scenario(pilot: Pilot[int]) -> None:
        await settle(pilot, app, server)
        lines.extend(screenshot_lines(app.export_screenshot(), size[0]))
        shown.extend(app.shown_columns)

    run_app(app, scenario, size=size)
    assert len(lines) == size[1]
    assert lines[1].split() == " ".join(shown).split()  # what is drawn is what was chosen
    assert "● connected  as operator  5 endpoints" in lines[0]
    header = lines[1].split()
    for title in ("ENDPOINT", "STATE", "FAILS", "IN-FLIGHT", "P95", "ERR%"):
        assert title in header, title

    def row(name: str) -> str:
        return next(line for line in lines if line.split()[:1] == [name])

    assert "2.31s" in row("anthropic-backup") and "840ms" in row("openai-primary")
    assert "6" in row("openai-primary").split()  # in flight
    assert all(len(line) <= size[0] for line in lines)
    screen = "\n".join(lines)
    # Whatever the width: the selected endpoint's attempts by cause and the deployment.
    assert "attempts/s ok 15.2  429 0.3" in screen
    assert "deployment chat  serving 1/2  success 99%" in screen
    assert "fallbacks anthropic-backup→openai-primary CircuitOpen" in screen
    if size[0] >= 140:
        assert header[-2:] == ["REJECTED", "NOTE"] and "TREND" in header
        assert row("vllm-local").endswith("incident-42 by tui@127.0.0.1:50312")
        assert row("ollama-dev").endswith("probe flaps by cli:alice@127.0.0.1:50400")
    text = "\n".join(lines) + "\n"
    golden = _golden(size)
    if os.environ.get("RAKKA_UPDATE_SNAPSHOTS"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8"), (
        "the screen changed; if intended, regenerate with RAKKA_UPDATE_SNAPSHOTS=1\n" + text
    )


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_screen_snap_compare_common_sizes(
    request: pytest.FixtureRequest, size: tuple[int, int]
) -> None:
    """pytest-textual-snapshot's SVG comparison at 80x24 and 140x40."""
    pytest.importorskip("pytest_textual_snapshot")
    snap_compare = request.getfixturevalue("snap_compare")
    app, server = scene()

    async def run_before(pilot: Pilot[int]) -> None:
        await settle(pilot, app, server)

    assert snap_compare(app, terminal_size=size, run_before=run_before)
