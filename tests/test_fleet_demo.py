"""``rakka-trio demo --redis URL --fleet NAME``: two demos and one console, in real processes
against a real redis-server. The console forces ``primary`` open with fleet scope; both demos
apply it and fail over to ``backup``, and their reports say so."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import trio

import rakka_trio as rk
from tests.conftest import RedisServer

CLI = [sys.executable, "-m", "rakka_trio._cli"]
_COMMAND = re.compile(r"RAKKA_TOKEN=(\S+) rakka-trio force-open (ws://\S+) primary --fleet")


class Demo:
    """One demo process; everything it prints is kept."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.output = b""

    async def read_all(self) -> None:
        assert self.process.stdout is not None
        while data := await self.process.stdout.receive_some():
            self.output += data

    @property
    def text(self) -> str:
        # Rich wraps long lines at 80 columns when stdout is not a terminal: unwrap.
        return " ".join(self.output.decode().split())


@pytest.mark.trio
async def test_two_demos_and_one_console_a_fleet_force_open_fails_both_over(
    redis_server: RedisServer,
) -> None:
    name = f"demo-{time.time_ns()}"
    argv = ["demo", "--redis", redis_server.url, "--fleet", name, "--duration", "12",
            "--concurrency", "4"]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    with trio.fail_after(55):
        async with trio.open_nursery() as nursery, rk.open_fleet(redis_server.url, name) as fleet:
            demos = []
            for _ in range(2):
                process = await trio.lowlevel.open_process(
                    [*CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
                )
                demos.append(Demo(process))
                nursery.start_soon(demos[-1].read_all)
            try:
                while len((await fleet.view()).nodes) < 2:  # noqa: ASYNC110 (polls Redis)
                    await trio.sleep(0.1)
                found = _COMMAND.search(demos[0].text)
                assert found is not None, demos[0].text
                token, url = found.groups()
                # The console: one fleet-scope force-open, sent to the first demo's server.
                done = await trio.run_process(
                    [*CLI, "force-open", url, "primary", "--fleet", "--duration", "6s",
                     "--reason", "drill"],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    env={**os.environ, "RAKKA_TOKEN": token},
                )  # fmt: skip
                assert done.returncode == 0, done.stderr
                assert b"2 of 2 nodes acked" in done.stdout
                for demo in demos:
                    await demo.process.wait()
            finally:
                for demo in demos:
                    if demo.process.returncode is None:
                        demo.process.kill()
    for demo in demos:
        text = demo.text
        assert demo.process.returncode == 0, text
        assert re.search(r"breaker primary: \w+ -> forced_open \(forced by fleet:cli:", text)
        assert f"fleet {name}: primary forced_open on every node by cli:" in text
        # The report: requests moved to the backup while the override held.
        failed_over = re.search(
            rf"fleet {name}: primary forced_open by cli:\S+ from [\d.]+s "
            r"to (?:[\d.]+s|the end) of 12s: (\d+) requests failed over meanwhile",
            text,
        )
        assert failed_over is not None, text
        assert int(failed_over.group(1)) > 0
        assert re.search(r"fallbacks from one endpoint to the next: .*primary:CircuitOpen", text)


def test_demo_fleet_needs_redis(capsys: pytest.CaptureFixture[str]) -> None:
    from rakka_trio import _cli

    assert _cli.main(["demo", "--fleet", "prod", "--duration", "1"]) == 2
    assert "--fleet needs --redis" in capsys.readouterr().err


def test_a_fleet_override_that_made_requests_fail_over_is_a_successful_demo(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rakka_trio._demo import DemoReport, exit_status

    report = DemoReport(
        outcomes={}, transitions=[], served=10, failed=0, trips=0, recoveries=0, tokens=0,
        cost=0.0, failures={}, control_url="ws://127.0.0.1:1", fleet_failovers=0,
    )  # fmt: skip
    assert exit_status(report) == 1  # nothing happened: neither the storm nor the fleet
    capsys.readouterr()
    report = DemoReport(
        outcomes={}, transitions=[], served=10, failed=0, trips=0, recoveries=0, tokens=0,
        cost=0.0, failures={}, control_url="ws://127.0.0.1:1", fleet_failovers=12,
    )  # fmt: skip
    assert exit_status(report) == 0
    assert capsys.readouterr().err == ""
