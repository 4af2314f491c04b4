"""The prometheus_client collector exposes the same families as prometheus_text."""

from __future__ import annotations

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import rakka_trio as rk
from rakka_trio.testing import MockProvider, serve_mock_provider

pytestmark = pytest.mark.trio


async def test_collector_serves_the_supervisors_metrics_through_a_registry() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            mock = MockProvider()
            await nursery.start(serve_mock_provider, mock)
            cfg = rk.SupervisorConfig(
                endpoints=[
                    rk.EndpointConfig(
                        name="a",
                        provider="openai",
                        base_url=mock.base_url_for("openai"),
                        credential=rk.StaticCredential("sk-test-collector"),
                        model="gpt-4o-mini",
                    )
                ]
            )
            async with rk.open_supervisor(cfg) as sup:
                ep = sup.endpoint("a")
                await ep.complete(
                    rk.ChatRequest(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                    )
                )
                registry = CollectorRegistry()
                collector = rk.PrometheusCollector(sup).register(registry)
                text = generate_latest(registry).decode()
                families = {f.name: f for f in text_string_to_metric_families(text)}
                requests = families["rakka_requests"]
                ok = [s for s in requests.samples if s.labels.get("outcome") == "ok"]
                assert ok and ok[0].labels["endpoint"] == "a" and ok[0].value == 1
                assert "rakka_breaker_state" in families
                collector.unregister()
                assert "rakka_requests" not in generate_latest(registry).decode()
            nursery.cancel_scope.cancel()
