"""The demo runs its scripted incident end to end on real loopback sockets, and an operator can
act on it live through the control plane."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import attrs
import pytest
import trio
from rich.console import Console

import rakka_trio as rk
from rakka_trio import _cli, _demo
from rakka_trio._control._protocol import TransitionFrame
from rakka_trio._demo import DemoReport, demo_main, exit_status
from tests.conftest import RedisServer


@pytest.mark.trio
async def test_demo_trips_fails_over_recovers_and_takes_operator_commands() -> None:
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False)
    ready = trio.Event()
    attach: dict[str, str] = {}
    report: list[DemoReport] = []
    seen: list[TransitionFrame] = []

    def on_ready(sup: rk.Supervisor, control: rk.ControlServer, token: str) -> None:
        attach.update(url=control.url, token=token)
        ready.set()

    async def run() -> None:
        report.append(
            await demo_main(duration=4.0, seed=3, concurrency=6, console=console, on_ready=on_ready)
        )

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await ready.wait()
            async with rk.open_control_client(
                attach["url"], token=attach["token"], client_name="drill"
            ) as client:
                # Act once the storm (20-50 % of the run) is over and primary recovered.
                with trio.fail_after(20):
                    async for frame in client:
                        if (
                            isinstance(frame, TransitionFrame)
                            and frame.endpoint == "primary"
                            and frame.to_state == "closed"
                        ):
                            break
                ack = await client.force_open("backup", duration=0.4, reason="drill-7")
                assert ack.id is not None
                with trio.fail_after(5):
                    async for frame in client:
                        if isinstance(frame, TransitionFrame) and frame.endpoint == "backup":
                            seen.append(frame)
                            if frame.to_state == "half_open":
                                break

    (result,) = report
    text = out.getvalue()
    assert result.trips >= 1 and result.recoveries >= 1
    assert "primary: closed -> open" in text
    assert "half_open -> closed (probe_succeeded)" in text
    # Failover kept users served: only a small share of requests found both endpoints refusing.
    assert result.served > 20 * max(1, result.failed)
    assert result.outcomes["primary"]["circuit_open"] > 0
    assert result.outcomes["backup"].get("429", 0) + result.outcomes["backup"]["ok"] > 0
    assert result.tokens > 0
    assert result.cost > 0  # priced from the reported usage
    assert "fallbacks from one endpoint to the next: primary:CircuitOpen" in text
    # The operator's command reached the breaker and every watcher saw it at once.
    assert [f.to_state for f in seen][:2] == ["forced_open", "half_open"]
    assert "operator drill" in text and "force_open backup (drill-7)" in text
    assert "Final report" in text


@pytest.mark.trio
async def test_demo_shares_its_limits_through_redis(redis_server: RedisServer) -> None:
    console = Console(file=io.StringIO(), width=160, force_terminal=False)
    captured: list[rk.Supervisor] = []
    with trio.fail_after(30):
        report = await demo_main(
            duration=3.0,
            seed=4,
            concurrency=4,
            console=console,
            redis_url=redis_server.url,
            on_ready=lambda sup, control, token: captured.append(sup),
        )
    assert report.trips >= 1 and report.recoveries >= 1
    assert report.served > 20 * max(1, report.failed)
    (key,) = captured[0].limiter("primary").statistics().keys
    assert key.mode == "approximate"
    # Budget leased from Redis in the background: far fewer round trips than admissions.
    assert 0 < key.redis_round_trips < key.admitted / 5


# --- the command line's rough edges ---------------------------------------------------------------


@pytest.mark.trio
async def test_the_events_line_is_one_line_at_80_columns() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    urls: list[str] = []
    with trio.fail_after(30):
        await demo_main(
            duration=0.5,
            seed=1,
            concurrency=1,
            console=console,
            on_ready=lambda sup, control, token: urls.append(control.url),
        )
    (url,) = urls
    (line,) = [line for line in out.getvalue().splitlines() if "rakka-trio events" in line]
    assert line.startswith("RAKKA_TOKEN=") and line.endswith(f"rakka-trio events {url}")


def test_an_exit_status_1_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    report = DemoReport(
        outcomes={}, transitions=[], served=10, failed=0, trips=0, recoveries=0, tokens=0,
        cost=0.0, failures={}, control_url="ws://127.0.0.1:1",
    )  # fmt: skip
    assert exit_status(report) == 1
    err = capsys.readouterr().err
    assert "exit status 1" in err and "trips: 0, recoveries: 0" in err and "--duration" in err
    assert exit_status(attrs.evolve(report, trips=1, recoveries=1)) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--redis", "localhost:6379"], "argument --redis: must be redis://HOST"),
        (["--redis", "redis://127.0.0.1:99999/0"], "argument --redis: not a valid URL"),
        (["--redis", "redis://:hunter2@127.0.0.1:6379/x"], "database after the host"),
        (["--concurrency", "0"], "argument --concurrency: must be from 1 to 1000"),
        (["--concurrency", "many"], "argument --concurrency: not a whole number"),
    ],
)
def test_bad_demo_arguments_are_one_line_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        _cli.main(["demo", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "hunter2" not in err
    assert "Traceback" not in err and "ExceptionGroup" not in err
    assert len(err.splitlines()) <= 3  # argparse's usage lines and the one error line


def test_an_unreachable_redis_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    out = io.StringIO()
    assert _demo.run_demo(duration=5.0, redis_url=url, console=Console(file=out)) == 3
    err = capsys.readouterr().err
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in err
    assert "without --redis" in err and "hunter2" not in err
    assert len(err.splitlines()) == 1
    assert out.getvalue() == ""  # refused before anything started


def _run_demo_process(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rakka_trio._cli", "demo", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )


def _rate(output: str, endpoint: str) -> float:
    match = re.search(rf"{endpoint} ([\d,]+)/min of", output)
    assert match is not None, output
    return float(match.group(1).replace(",", ""))


def test_two_demo_processes_share_one_budget(private_redis: RedisServer) -> None:
    # Each demo alone asks for several hundred requests a second, far above the shared
    # 3,000/min of primary: two independent budgets would give about twice that in total.
    demos = [_run_demo_process("--duration", "6", "--redis", private_redis.url) for _ in "ab"]
    outputs = [demo.communicate(timeout=90) for demo in demos]
    for demo, (out, err) in zip(demos, outputs, strict=True):
        assert demo.returncode == 0, err
        assert "nodes sharing the budgets now 2" in out
        assert "shared budgets (redis, 2 nodes)" in out
    total = sum(_rate(out, "primary") for out, _ in outputs)
    (primary_rpm, burst) = _demo.SHARED_BUDGETS["primary"]
    assert burst is not None
    # One budget: its rate plus each node's first burst, over a 6 s run.
    bound = primary_rpm + 2 * burst * 60 / 6
    assert total <= bound * 1.15, (total, bound)
    assert all(_rate(out, "primary") > 0 for out, _ in outputs)


# --- signals: a clean leave, a partial report, the conventional exit status ---------------------


def _interrupt_demo(
    sig: signal.Signals, *argv: str, before: Callable[[], None] = lambda: None
) -> tuple[int, str, str]:
    """Start ``rakka-trio demo --duration 30``, send ``sig`` once its load runs (after calling
    ``before``), and return (exit status, stdout, stderr). A watchdog kills it if it does not
    end in time."""
    demo = _run_demo_process("--duration", "30", *argv)
    watchdog = threading.Timer(90, demo.kill)
    watchdog.start()
    try:
        assert demo.stdout is not None
        seen = ""
        while "rakka-trio events" not in seen:
            line = demo.stdout.readline()
            assert line, "the demo ended before it started its load"
            seen += line
        time.sleep(1.0)  # into the run: requests in flight
        before()
        demo.send_signal(sig)
        out, err = demo.communicate(timeout=60)
    finally:
        watchdog.cancel()
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    return demo.returncode, seen + out, err


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_demo_with_a_partial_report(sig: signal.Signals, status: int) -> None:
    code, out, err = _interrupt_demo(sig)
    assert code == status, err
    assert "Traceback" not in out + err and "Exception" not in err
    assert "stopped early at t = " in out and "of 30s: the report covers the run so far" in out
    assert "Final report" in out and "user requests: " in out
    assert f"stopped by {sig.name} (exit status {status})" in err


def _member_sets(redis: RedisServer) -> dict[str, int]:
    """Each ``…:n`` key (the live nodes of a shared limit key) and its member count."""
    keys = [k for k in redis.command("KEYS", "*").decode().split() if k.endswith(":n")]
    return {k: int(redis.command("ZCARD", k).decode().strip().lstrip(":")) for k in keys}


def test_sigterm_leaves_the_shared_limits_at_once(private_redis: RedisServer) -> None:
    registered: dict[str, int] = {}
    code, out, err = _interrupt_demo(
        signal.SIGTERM,
        "--redis",
        private_redis.url,
        before=lambda: registered.update(_member_sets(private_redis)),
    )
    assert code == 143, err
    assert "Final report" in out
    assert registered and all(n == 1 for n in registered.values()), registered
    # The node unregistered itself on the way out (killed, it would stay for node_ttl): the
    # member sets are empty, so Redis dropped them.
    assert _member_sets(private_redis) == {}
