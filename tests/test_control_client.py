"""open_control_client against a real control server on 127.0.0.1: commands and their typed
errors, the frame stream, client-side lag, and connection failures."""

from __future__ import annotations

import functools

import pytest
import trio

import rakka_trio as rk
from rakka_trio import BreakerState as S
from rakka_trio._control import _protocol as proto

from .control_helpers import TOKEN, control_server, wait_for

pytestmark = pytest.mark.trio


async def test_operator_session() -> None:
    with trio.fail_after(10):
        async with (
            control_server("a", "b") as (sup, srv),
            rk.open_control_client(srv.url, token=TOKEN, client_name="ops-bot") as client,
        ):
            assert client.role == "operator"
            assert [e.name for e in client.snapshot.endpoints] == ["a", "b"]

            ack = await client.force_open("a", 120, "incident-7")
            assert (ack.endpoint, ack.state) == ("a", "forced_open")
            assert sup.breaker("a").state is S.FORCED_OPEN
            # The command's own events are on the stream, before anything later.
            command = await client.receive()
            assert isinstance(command, proto.CommandFrame)
            assert command.actor.startswith("ops-bot@127.0.0.1:")
            transition = await client.receive()
            assert isinstance(transition, proto.TransitionFrame)
            assert transition.to_state == "forced_open" and transition.reason == "incident-7"

            assert (await client.disable("b")).state == "disabled"
            assert (await client.reset("a", "resolved")).state == "closed"
            snapshot = await client.get_state()
            assert {e.name: e.state for e in snapshot.endpoints} == {"a": "closed", "b": "disabled"}
            assert client.pending_commands == {}


async def test_command_errors_are_typed() -> None:
    with trio.fail_after(10):
        async with (
            control_server("a") as (sup, srv),
            rk.open_control_client(srv.url, token=TOKEN) as client,
        ):
            with pytest.raises(rk.ControlUnknownEndpoint) as unknown:
                await client.force_open("nope")
            assert unknown.value.endpoint == "nope" and unknown.value.code == "unknown_endpoint"
            assert "nope" in str(unknown.value) and "a" in str(unknown.value)
            assert isinstance(unknown.value, rk.ControlCommandError)
            assert isinstance(unknown.value, rk.RakkaError)

            # Values the protocol refuses are refused before anything is sent.
            with pytest.raises(ValueError, match="duration"):
                await client.force_open("a", duration=-1)
            with pytest.raises(ValueError, match="reason"):
                await client.reset("a", reason="\x1b[2J")
            assert sup.breaker("a").state is S.CLOSED


async def test_viewer_commands_raise_auth_errors() -> None:
    with trio.fail_after(10):
        async with (
            control_server("a", allow_viewers=True) as (sup, srv),
            rk.open_control_client(srv.url, token="not-it") as client,
        ):
            assert client.role == "viewer"
            with pytest.raises(rk.ControlAuthError) as info:
                await client.force_open("a")
            assert info.value.code == "forbidden"
            assert sup.breaker("a").state is S.CLOSED
            assert (await client.get_state()).endpoints[0].state == "closed"


async def test_require_operator_refuses_a_viewer_session() -> None:
    with trio.fail_after(10):
        async with control_server(allow_viewers=True) as (_, srv):
            with pytest.raises(rk.ControlAuthError, match="token not accepted"):
                async with rk.open_control_client(srv.url, require_operator=True):
                    pytest.fail("should not get a session")


async def test_unauthorized_at_hello() -> None:
    with trio.fail_after(10):
        async with control_server() as (_, srv):
            for token in (None, "wrong-token-123"):
                with pytest.raises(rk.ControlAuthError) as info:
                    async with rk.open_control_client(srv.url, token=token):
                        pytest.fail("should not get a session")
                assert info.value.code == "unauthorized"
                assert "wrong-token-123" not in str(info.value)


async def test_connection_refused() -> None:
    # Bind a port, then free it: nothing listens there any more.
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with trio.fail_after(10), pytest.raises(rk.ControlConnectionError, match="refused"):
        async with rk.open_control_client(f"ws://127.0.0.1:{port}", token=TOKEN):
            pytest.fail("should not connect")


async def test_not_a_control_server() -> None:
    async def http_server(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    async def silent_server(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            (http,) = await nursery.start(
                functools.partial(trio.serve_tcp, http_server, 0, host="127.0.0.1")
            )
            (silent,) = await nursery.start(
                functools.partial(trio.serve_tcp, silent_server, 0, host="127.0.0.1")
            )
            http_port = http.socket.getsockname()[1]
            with pytest.raises(rk.ControlConnectionError, match="HTTP 404"):
                async with rk.open_control_client(f"ws://127.0.0.1:{http_port}"):
                    pass
            silent_port = silent.socket.getsockname()[1]
            with pytest.raises(rk.ControlConnectionError, match="timed out"):
                async with rk.open_control_client(
                    f"ws://127.0.0.1:{silent_port}", connect_timeout=0.3
                ):
                    pass
            nursery.cancel_scope.cancel()


async def test_bad_urls() -> None:
    for url in ("http://127.0.0.1:1", "127.0.0.1:8765", "ws://", "ws://h:notaport"):
        with pytest.raises(rk.ControlConnectionError):
            async with rk.open_control_client(url):
                pass


async def test_acks_arrive_even_when_nobody_reads_the_stream() -> None:
    with trio.fail_after(10):
        async with (
            control_server("a", command_rate=1000, command_burst=1000) as (_, srv),
            rk.open_control_client(srv.url, token=TOKEN, buffer=4) as client,
        ):
            # Dozens of events pile up unread; every command still gets its answer.
            for i in range(20):
                await client.force_open("a", reason=f"round {i}")
                await client.reset("a")
            assert client.dropped > 0
            first = await client.receive()
            assert isinstance(first, proto.LaggedFrame) and first.dropped == client.dropped
            rest = [client.receive_nowait() for _ in range(4)]
            assert all(isinstance(f, proto.TransitionFrame | proto.CommandFrame) for f in rest)
            with pytest.raises(trio.WouldBlock):
                client.receive_nowait()


async def test_stream_ends_and_pending_commands_fail_when_the_server_goes() -> None:
    with trio.fail_after(10):
        async with (
            control_server("a") as (_, srv),
            rk.open_control_client(srv.url, token=TOKEN) as client,
        ):
            await wait_for(lambda: srv.statistics().active_connections == 1)
            srv.close()
            frames = [frame async for frame in client]  # ends instead of hanging
            assert all(not isinstance(f, proto.TransitionFrame) for f in frames)
            assert client.closed is not None
            with pytest.raises(rk.ControlConnectionError, match="not connected"):
                await client.reset("a")


async def test_application_errors_propagate_unwrapped() -> None:
    with trio.fail_after(10):
        async with control_server() as (_, srv):
            with pytest.raises(KeyError, match="mine"):
                async with rk.open_control_client(srv.url, token=TOKEN):
                    raise KeyError("mine")
            # Cancellation from outside passes through too.
            with trio.move_on_after(0.05) as scope:
                async with rk.open_control_client(srv.url, token=TOKEN) as client:
                    async for _ in client:
                        pass
            assert scope.cancelled_caught
            await wait_for(lambda: srv.statistics().active_connections == 0)
