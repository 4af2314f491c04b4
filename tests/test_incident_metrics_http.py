"""``GET /metrics`` on the control port, over real sockets: Prometheus text that
``prometheus_client`` parses, the bearer token, ``metrics_public``, and the websocket upgrade
still working on the same port."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import rakka_trio as rk
from rakka_trio.testing import Fault, MockProvider, serve_mock_provider

from .control_helpers import TOKEN

pytestmark = pytest.mark.trio

HI = rk.ChatRequest(messages=[{"role": "user", "content": "hi"}])


@asynccontextmanager
async def serving(
    **server_kw: Any,
) -> AsyncIterator[tuple[rk.Supervisor, rk.ControlServer, MockProvider]]:
    """A supervisor with traffic behind it and its control server; yields the /metrics URL."""
    mock = MockProvider(reply="fine", chunks=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_mock_provider, mock)
        config = rk.SupervisorConfig(
            endpoints=[
                rk.EndpointConfig(
                    name="primary",
                    provider="openai",
                    base_url=mock.base_url_for("openai"),
                    model="m",
                    retry=rk.RetryPolicy(max_retries=1, initial_backoff=0.01),
                )
            ],
            stats_interval=3600.0,
        )
        async with rk.open_supervisor(config) as sup:
            server_kw.setdefault("token", TOKEN)
            srv = await nursery.start(
                functools.partial(rk.serve_control, sup, "127.0.0.1", 0, **server_kw)
            )
            yield sup, srv, mock
            nursery.cancel_scope.cancel()


def metrics_url(srv: rk.ControlServer) -> str:
    return f"http://127.0.0.1:{srv.port}/metrics"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_parse_and_need_the_operator_token() -> None:
    with trio.fail_after(20):
        async with serving() as (sup, srv, mock), httpx.AsyncClient() as http:
            url = metrics_url(srv)
            ep = sup.endpoint("primary")
            await ep.complete(HI)
            mock.add_fault("openai", Fault.status(503), times=1)
            await ep.complete(HI)  # a 503, then served on the retry

            response = await http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            found = samples(response.text)

            def value(name: str, **labels: str) -> float:
                return found[(name, frozenset({"endpoint": "primary", **labels}.items()))]

            assert value("rakka_attempts_total", outcome="ok") == 2
            assert value("rakka_attempts_total", outcome="5xx") == 1
            assert value("rakka_requests_total", outcome="ok") == 2
            assert value("rakka_retries_total") == 1
            assert value("rakka_breaker_state", state="closed") == 1

            # No token, a wrong token, another scheme: 401, and no figures.
            for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
                refused = await http.get(url, headers=headers)
                assert refused.status_code == 401
                assert refused.headers["www-authenticate"].startswith("Bearer")
                assert "rakka_" not in refused.text and TOKEN not in refused.text

            # HEAD answers the headers only; a query string is ignored.
            head = await http.head(url, headers={"Authorization": f"Bearer {TOKEN}"})
            assert head.status_code == 200 and head.content == b""
            query = await http.get(url + "?x=1", headers={"Authorization": f"Bearer {TOKEN}"})
            assert query.status_code == 200 and "rakka_attempts_total" in query.text


async def test_public_metrics_and_the_websocket_on_the_same_port() -> None:
    with trio.fail_after(20):
        async with serving(metrics_public=True) as (_, srv, _m), httpx.AsyncClient() as http:
            url = metrics_url(srv)
            response = await http.get(url)
            assert response.status_code == 200
            assert "rakka_breaker_state" in response.text
            # Any other plain request is still refused by the websocket layer.
            other = await http.get(url.replace("/metrics", "/"))
            assert other.status_code == 400
            ws_url = url.replace("http://", "ws://").replace("/metrics", "")
            async with rk.open_control_client(ws_url, token=TOKEN) as client:
                assert client.role == "operator"
                snapshot = await client.get_state()
                assert [e.name for e in snapshot.endpoints] == ["primary"]


async def test_a_wrong_bearer_token_counts_against_the_peer() -> None:
    with trio.fail_after(20):
        async with serving() as (_, srv, _m), httpx.AsyncClient() as http:
            url = metrics_url(srv)
            throttle = srv._gate._throttle
            assert throttle.ready_at("127.0.0.1") <= trio.current_time()
            assert (await http.get(url, headers={"Authorization": "Bearer a"})).status_code == 401
            # Like a failed hello: the peer's next try (scrape or hello) must wait its turn.
            assert throttle.ready_at("127.0.0.1") > trio.current_time()
            assert srv._gate.metrics is not None and srv._gate.metrics.refused == 1
            again = await http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
            assert again.status_code == 200 and srv._gate.metrics.scrapes == 1
