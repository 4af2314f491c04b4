"""The control-plane CLI (``rakka-trio state|events|force-open|reset|disable``) against a
real control server: output, exit codes, token sources, and that tokens never leak."""

from __future__ import annotations

import functools
import io
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

import rakka_trio as rk
from rakka_trio import BreakerState as S
from rakka_trio import _cli
from rakka_trio._control import _cli as _control_cli
from rakka_trio._control import _protocol as proto
from rakka_trio._control._cli import (
    EXIT_AUTH,
    EXIT_CONNECTION,
    EXIT_OK,
    EXIT_UNKNOWN_ENDPOINT,
    EXIT_USAGE,
    format_frame,
    format_snapshot,
)

from .control_helpers import TOKEN, control_server, wait_for


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAKKA_TOKEN", raising=False)


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``rakka-trio ARGV`` in a worker thread (it starts its own Trio run there) while
    this test's run keeps serving; returns (exit status, stdout, stderr)."""
    code = await trio.to_thread.run_sync(functools.partial(_cli.main, list(argv)))
    out, err = capsys.readouterr()
    return code, out, err


async def _collect(
    into: list[tuple[int, str, str]], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    into.append(await cli(capsys, *argv))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.trio
async def test_force_open_reset_and_disable(capsys: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(20):
        async with control_server("openai-primary", "backup") as (sup, srv):
            code, out, err = await cli(
                capsys,
                "force-open", srv.url, "openai-primary",
                "--duration", "300", "--reason", "incident-42",
                "--token", TOKEN, "--client", "cli-test",
            )  # fmt: skip
            assert (code, err) == (EXIT_OK, "")
            assert out == "openai-primary: forced_open for 300s (reason: incident-42)\n"
            stats = sup.breaker("openai-primary").statistics()
            assert stats.state is S.FORCED_OPEN and stats.forced_reason == "incident-42"
            assert stats.forced_by is not None and stats.forced_by.startswith("cli-test@127.0.0.1:")

            code, out, _ = await cli(
                capsys, "disable", srv.url, "backup", "--until-reset", "--token", TOKEN
            )
            assert code == EXIT_OK and out == "backup: disabled until reset\n"
            assert sup.breaker("backup").state is S.DISABLED

            code, out, _ = await cli(capsys, "reset", srv.url, "openai-primary", "--token", TOKEN)
            assert code == EXIT_OK and out == "openai-primary: closed\n"
            assert sup.breaker("openai-primary").state is S.CLOSED


@pytest.mark.trio
async def test_state(capsys: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(20):
        async with control_server("alpha", "beta", allow_viewers=True) as (sup, srv):
            sup.force_open("beta", 600, reason="maintenance", actor="ops")
            code, out, err = await cli(capsys, "state", srv.url)  # a viewer may look
            assert (code, err) == (EXIT_OK, "")
            lines = out.splitlines()
            assert lines[0].startswith("node ") and lines[0].endswith("2 endpoints")
            assert lines[1].split() == [
                "ENDPOINT", "PROVIDER", "STATE", "FAILS", "RATE", "IN-FLIGHT", "P50/P95/P99",
                "LIMITER", "TRIPS", "REJECTED", "UNTIL", "NOTE",
            ]  # fmt: skip
            alpha, beta = lines[2], lines[3]
            assert alpha.split()[:3] == ["alpha", "openai", "closed"]
            assert beta.split()[:3] == ["beta", "openai", "forced_open"]
            assert "10m left" in beta and "maintenance (by ops)" in beta

            code, out, _ = await cli(capsys, "state", srv.url, "--json")
            assert code == EXIT_OK
            snapshot = json.loads(out)
            by_name = {e["name"]: e for e in snapshot["endpoints"]}
            assert by_name["beta"]["state"] == "forced_open"
            assert 599 < by_name["beta"]["open_until_in"] <= 600


@pytest.mark.trio
async def test_events_tail(capsys: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(20):
        async with control_server("a", allow_viewers=True) as (sup, srv):
            for json_mode in (False, True):
                argv = ["events", srv.url, "--count", "3"] + (["--json"] if json_mode else [])
                result: list[tuple[int, str, str]] = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_collect, result, capsys, argv)
                    await wait_for(lambda: srv.statistics().active_connections == 1)
                    sup.force_open("a", 30, reason="live", actor="api-test")
                    sup.reset("a")
                await wait_for(lambda: srv.statistics().active_connections == 0)
                code, out, err = result[0]
                assert code == EXIT_OK
                assert "connected to" in err and "as viewer" in err  # status goes to stderr
                lines = out.splitlines()
                assert len(lines) == 3
                if json_mode:
                    frames = [json.loads(line) for line in lines]
                    assert [f["type"] for f in frames] == ["command", "transition", "command"]
                    assert frames[1]["to"] == "forced_open" and frames[1]["reason"] == "live"
                else:
                    assert "a  force_open by api-test for 30s  reason: live" in lines[0]
                    assert "a  closed -> forced_open  (forced)" in lines[1]
                    assert "30s left" in lines[1] and "by api-test" in lines[1]
                    assert "a  reset by api" in lines[2]


@pytest.mark.trio
async def test_connection_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(20):
        url = f"ws://127.0.0.1:{free_port()}"
        for argv in (
            ["state", url],
            ["force-open", url, "a", "--duration", "60", "--token", TOKEN],
        ):
            code, out, err = await cli(capsys, *argv)
            assert code == EXIT_CONNECTION
            assert out == ""
            assert err.startswith("rakka-trio: error: could not connect to ws://127.0.0.1:")
            assert "connection refused" in err


@pytest.mark.trio
async def test_auth_failures(capsys: pytest.CaptureFixture[str]) -> None:
    wrong = "wrong-token-a8b7c6d5"
    with trio.fail_after(20):
        async with control_server("a") as (sup, srv):
            code, out, err = await cli(
                capsys, "force-open", srv.url, "a", "--duration", "60", "--token", wrong
            )
            assert (code, out) == (EXIT_AUTH, "")
            assert "authentication failed" in err and wrong not in err
            code, _, err = await cli(capsys, "state", srv.url)
            assert code == EXIT_AUTH
            assert "no token given" in err and "RAKKA_TOKEN" in err
            assert sup.breaker("a").state is S.CLOSED
        async with control_server("a", allow_viewers=True) as (sup, srv):
            # A viewer may connect, but not act: still an authentication failure.
            code, _, err = await cli(capsys, "reset", srv.url, "a", "--token", wrong)
            assert code == EXIT_AUTH and "read-only" in err
            # events with a wrong token works read-only, with a warning.
            code, out, err = await cli(capsys, "state", srv.url, "--token", wrong)
            assert code == EXIT_OK and "token was not accepted" in err and wrong not in err


@pytest.mark.trio
async def test_unknown_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(20):
        async with control_server("a", "b") as (_, srv):
            code, out, err = await cli(
                capsys, "force-open", srv.url, "c", "--duration", "60", "--token", TOKEN
            )
            assert (code, out) == (EXIT_UNKNOWN_ENDPOINT, "")
            assert err == "rakka-trio: error: unknown endpoint 'c' (known: a, b)\n"


@pytest.mark.trio
async def test_token_sources(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with control_server("a") as (sup, srv):
            monkeypatch.setenv("RAKKA_TOKEN", TOKEN)
            code, _, _ = await cli(capsys, "force-open", srv.url, "a", "--until-reset")
            assert code == EXIT_OK and sup.breaker("a").state is S.FORCED_OPEN
            monkeypatch.setenv("RAKKA_TOKEN", "stale-token-from-env")
            token_file = tmp_path / "token"
            token_file.write_text(TOKEN + "\n")
            code, _, _ = await cli(capsys, "reset", srv.url, "a", "--token-file", str(token_file))
            assert code == EXIT_OK and sup.breaker("a").state is S.CLOSED  # the file wins
            code, _, err = await cli(
                capsys, "reset", srv.url, "a", "--token-file", str(tmp_path / "missing")
            )
            assert code == EXIT_USAGE and "cannot read --token-file" in err


@pytest.mark.trio
async def test_values_the_protocol_refuses_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trio.fail_after(20):
        async with control_server("a") as (sup, srv):
            code, _, err = await cli(
                capsys, "force-open", srv.url, "a", "--duration", "60",
                "--token", TOKEN, "--reason", "red\x1b[31m",
            )  # fmt: skip
            assert code == EXIT_USAGE and "reason" in err and "\x1b" not in err
            assert sup.breaker("a").state is S.CLOSED


def run_main(argv: Sequence[str]) -> int:
    with pytest.raises(SystemExit) as info:
        _cli.main(list(argv))
    code = info.value.code
    assert isinstance(code, int)
    return code


def test_argument_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["force-open", "ws://x:1", "a", "--duration", "-5"]) == EXIT_USAGE
    assert "not a duration" in capsys.readouterr().err
    assert run_main(["force-open", "ws://x:1", "a", "--duration", "0"]) == EXIT_USAGE
    assert "more than 0" in capsys.readouterr().err
    assert run_main(["force-open", "ws://x:1", "a", "--duration", "5m", "--until-reset"]) == 2
    assert "not allowed with" in capsys.readouterr().err
    assert run_main(["events", "ws://x:1", "--count", "0"]) == EXIT_USAGE
    assert run_main(["reset", "ws://x:1"]) == EXIT_USAGE  # no endpoint


def test_help_documents_exit_codes_and_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["force-open", "--help"]) == 0
    text = capsys.readouterr().out
    for line in ("3    could not connect", "4    authentication failed", "5    unknown endpoint"):
        assert line in text
    assert "RAKKA_TOKEN" in text and "--duration" in text and "--reason" in text


def test_human_output_cannot_drive_the_terminal() -> None:
    # Set through the Python API (the wire protocol refuses such text), shown safely.
    frame = proto.TransitionFrame(
        wall=0.0,
        endpoint="a\x1b]0;pwned\x07",
        from_state="closed",
        to_state="forced_open",
        cause="forced",
        consecutive_failures=0,
        failure_rate=None,
        calls_in_window=0,
        trips=0,
        open_until_in=None,
        open_until_wall=None,
        until_reset=True,
        actor="x",
        reason="\x1b[2J\u202eevil",
    )
    line = format_frame(frame)
    assert line.isprintable()
    assert "\\x1b]0;pwned\\x07" in line and "until reset" in line


@pytest.mark.trio
async def test_acceptance_force_open_shows_live_in_events() -> None:
    """The issue's acceptance check, with the real console entry point in subprocesses:
    `rakka-trio events` is following when `rakka-trio force-open` trips a breaker."""
    env = {"RAKKA_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "rakka_trio._cli"]
    with trio.fail_after(30):
        async with control_server("openai-primary", "backup") as (sup, srv):
            async with trio.open_nursery() as nursery:
                tail = await nursery.start(
                    functools.partial(
                        trio.run_process,
                        [*cmd, "events", srv.url, "--count", "2"],
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                    )
                )
                assert tail.stdout is not None
                await wait_for(lambda: srv.statistics().active_connections == 1)
                done = await trio.run_process(
                    [*cmd, "force-open", srv.url, "openai-primary",
                     "--duration", "300", "--reason", "incident-42"],
                    env=env,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )  # fmt: skip
                assert done.returncode == EXIT_OK, done.stderr
                assert b"openai-primary: forced_open for 300s" in done.stdout
                assert sup.breaker("openai-primary").state is S.FORCED_OPEN
                output = b""
                async for chunk in tail.stdout:
                    output += chunk
            assert tail.returncode == EXIT_OK
            command, transition = output.decode().splitlines()
            assert "openai-primary  force_open by cli:" in command
            assert "reason: incident-42" in command
            assert "openai-primary  closed -> forced_open  (forced)" in transition
            assert "reason: incident-42" in transition


@pytest.mark.trio
async def test_console_entry_point_exit_status() -> None:
    with trio.fail_after(30):
        async with control_server("a") as (sup, srv):
            done = await trio.run_process(
                [sys.executable, "-m", "rakka_trio._cli", "force-open", srv.url, "a",
                 "--duration", "5", "--reason", "from a subprocess"],
                env={"RAKKA_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )  # fmt: skip
            assert done.returncode == EXIT_OK, done.stderr
            assert done.stdout == b"a: forced_open for 5s (reason: from a subprocess)\n"
            assert sup.breaker("a").state is S.FORCED_OPEN
            done = await trio.run_process(
                [sys.executable, "-m", "rakka_trio._cli", "reset", srv.url, "zzz"],
                env={"RAKKA_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert done.returncode == EXIT_UNKNOWN_ENDPOINT


# --- durations, until-reset, the state table, URLs -----------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize(("typed", "seconds"), [("5m", 300.0), ("1h30m", 5400.0), ("2d", 172800.0)])
async def test_duration_units_like_the_console(
    capsys: pytest.CaptureFixture[str], typed: str, seconds: float
) -> None:
    with trio.fail_after(20):
        async with control_server("a") as (sup, srv):
            code, out, err = await cli(
                capsys, "force-open", srv.url, "a", "--duration", typed, "--token", TOKEN
            )
            assert (code, err) == (EXIT_OK, "")
            assert out == f"a: forced_open for {seconds:g}s\n"
            stats = sup.breaker("a").statistics()
            assert stats.state is S.FORCED_OPEN
            assert stats.open_until is not None
            assert seconds - 5 < stats.open_until - trio.current_time() <= seconds


@pytest.mark.trio
@pytest.mark.parametrize("command", ["force-open", "disable"])
async def test_until_reset_must_be_asked_for(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    with trio.fail_after(20):
        async with control_server("a") as (sup, srv):
            # Not a terminal (a script, CI): refused with a usage error, nothing sent.
            code, out, err = await cli(capsys, command, srv.url, "a", "--token", TOKEN)
            assert (code, out) == (EXIT_USAGE, "")
            assert "lasts until `rakka-trio reset`" in err and "--until-reset" in err
            assert sup.breaker("a").state is S.CLOSED
            code, out, _ = await cli(
                capsys, command, srv.url, "a", "--until-reset", "--token", TOKEN
            )
            assert code == EXIT_OK and out.endswith("until reset\n")
            assert sup.breaker("a").state in (S.FORCED_OPEN, S.DISABLED)


class _Terminal(io.StringIO):
    """Standard input typed at a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.trio
@pytest.mark.parametrize(("answer", "expected"), [("y\n", EXIT_OK), ("\n", 1), ("no\n", 1)])
async def test_until_reset_asks_in_a_terminal(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    expected: int,
) -> None:
    monkeypatch.setattr(sys, "stdin", _Terminal(answer))
    monkeypatch.setattr(_control_cli, "_interactive", lambda: True)
    with trio.fail_after(20):
        async with control_server("a") as (sup, srv):
            code, out, err = await cli(capsys, "force-open", srv.url, "a", "--token", TOKEN)
            assert "lasts until `rakka-trio reset`. Continue? [y/N]" in err
            assert code == expected
            if expected == EXIT_OK:
                assert out == "a: forced_open until reset\n"
                assert sup.breaker("a").state is S.FORCED_OPEN
            else:
                assert out == "" and "not confirmed" in err
                assert sup.breaker("a").state is S.CLOSED


def test_state_table_shows_in_flight_latency_and_limiter() -> None:
    def ep(name: str, **fields: Any) -> proto.EndpointState:
        values: dict[str, Any] = dict(
            name=name, provider="openai", base_url="http://x", state="closed",
            consecutive_failures=0, failures=0, successes=0, rejected=0, trips=0,
            failure_rate=None, calls_in_window=0, failures_in_window=0, open_for=None,
            open_until_in=None, open_until_wall=None, until_reset=False, forced_reason=None,
            forced_by=None, probes_in_flight=0,
        )  # fmt: skip
        values.update(fields)
        return proto.EndpointState(**values)

    snapshot = proto.Snapshot(
        node_id="n",
        wall=0.0,
        endpoints=[
            ep("busy", in_flight=6, queue_depth=2, latency_p50=0.12, latency_p95=0.84,
               latency_p99=1.5, limiter_utilization=0.42, failures=3, consecutive_failures=2,
               failure_rate=0.1, calls_in_window=30),
            ep("quiet"),
        ],
    )  # fmt: skip
    text = format_snapshot(snapshot)
    busy, quiet = table_row(text, "busy"), table_row(text, "quiet")
    assert busy["IN-FLIGHT"] == "6 +2 queued" and busy["LIMITER"] == "42%"
    assert busy["P50/P95/P99"] == "120ms/840ms/1.50s"
    assert busy["FAILS"] == "3 (2 in a row)" and busy["RATE"] == "10% of 30"
    assert [quiet[t] for t in ("FAILS", "RATE", "IN-FLIGHT", "P50/P95/P99", "LIMITER")] == [
        "0", "-", "-", "-", "-"
    ]  # fmt: skip


async def _fail() -> None:
    raise rk.ServerError("upstream 503", status=503)


@pytest.mark.trio
async def test_state_of_an_open_breaker_shows_the_failures_that_tripped_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trio.fail_after(20):
        async with control_server("a", "b") as (sup, srv):
            breaker = sup.breaker("a")
            for _ in range(5):  # the default failure threshold
                with pytest.raises(rk.ServerError):
                    await breaker.call(_fail)
            assert breaker.state is S.OPEN
            code, out, _ = await cli(capsys, "state", srv.url, "--token", TOKEN)
            assert code == EXIT_OK
            row = table_row(out, "a")
            assert row["STATE"] == "open"
            assert row["FAILS"] == "5"  # not 0: the trip restarted the consecutive count only
            assert row["TRIPS"] == "1" and row["UNTIL"].endswith("left")


def table_row(out: str, name: str) -> dict[str, str]:
    """``name``'s row of the ``state`` table, cut at the header's column positions."""
    lines = out.splitlines()
    header = lines[1]
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    titles = header.split()
    line = next(line for line in lines[2:] if line.split()[0] == name)
    bounds = [*starts[1:], None]
    return {t: line[a:b].strip() for t, a, b in zip(titles, starts, bounds, strict=True)}


@pytest.mark.parametrize("command", [["state"], ["events"], ["force-open", "--until-reset", "a"]])
def test_a_url_that_is_not_a_websocket_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    name, *rest = command
    code = _cli.main([name, "http://127.0.0.1:8765", *rest, "--token", TOKEN])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "must be ws://host:port or wss://host:port" in err and TOKEN not in err
