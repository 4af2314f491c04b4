"""Optional OpenTelemetry: a span per call and metrics through ``opentelemetry-api``,
checked with the SDK's in-memory exporters; nothing at all without the package."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import rakka_trio as rk
from rakka_trio._accounting import _otel
from rakka_trio.testing import Fault, MockProvider, serve_mock_provider

pytestmark = pytest.mark.trio

HI = rk.ChatRequest(messages=[{"role": "user", "content": "hi"}])
TOKEN_LIKE = "sk-live-" + "7" * 32  # a credential that must never reach a span


@pytest.fixture
async def mock() -> AsyncIterator[MockProvider]:
    provider = MockProvider(api_key=TOKEN_LIKE, reply="one two three", chunks=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_mock_provider, provider)
        yield provider
        nursery.cancel_scope.cancel()


def config(mock: MockProvider) -> rk.SupervisorConfig:
    return rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(
                name=name,
                provider="openai",
                base_url=mock.base_url_for("openai"),
                model="gpt-test",
                credential=rk.StaticCredential(TOKEN_LIKE),
                retry=rk.RetryPolicy(max_retries=0),
            )
            for name in ("primary", "backup")
        ],
        deployments=[rk.DeploymentConfig(name="chat", endpoints=["primary", "backup"])],
        stats_interval=3600.0,
    )


def points(reader: InMemoryMetricReader, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
    data = reader.get_metrics_data()
    found: dict[frozenset[tuple[str, Any]], Any] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        found[frozenset((point.attributes or {}).items())] = point
    return found


async def test_a_span_per_call_and_metrics(mock: MockProvider) -> None:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    with trio.fail_after(20):
        async with rk.open_supervisor(config(mock)) as sup:
            rk.instrument_opentelemetry(
                sup, tracer_provider=tracer_provider, meter_provider=meter_provider
            )
            assert (await sup.endpoint("primary").complete(HI)).text == "one two three"
            mock.add_fault("openai", Fault.status(503), times=1)
            with pytest.raises(rk.ServerError):
                await sup.endpoint("primary").complete(HI)
            mock.add_fault("openai", Fault.status(503), times=1)
            await sup.deployment("chat").complete(HI)  # moves from primary to backup

    finished = spans.get_finished_spans()
    assert [s.name for s in finished] == ["chat gpt-test"] * 4
    assert all(s.kind is SpanKind.CLIENT for s in finished)
    ok, failed, moved, served = finished
    assert ok.attributes is not None and failed.attributes is not None
    assert ok.attributes["rakka.endpoint"] == "primary"
    assert ok.attributes["rakka.outcome"] == "ok"
    assert ok.attributes["gen_ai.system"] == "openai"
    assert ok.attributes["gen_ai.request.model"] == "gpt-test"
    assert ok.attributes["gen_ai.usage.output_tokens"] == 3
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.attributes["rakka.outcome"] == "5xx"
    assert failed.attributes["error.type"] == "ServerError"
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["rakka.attempt_failed"]
    assert moved.attributes is not None and served.attributes is not None
    assert (moved.attributes["rakka.endpoint"], served.attributes["rakka.endpoint"]) == (
        "primary",
        "backup",
    )
    for span in finished:  # no message, no credential
        assert TOKEN_LIKE not in repr(span.to_json())

    requests = points(reader, "rakka.requests")
    by_outcome = {
        (dict(k)["rakka.endpoint"], dict(k)["rakka.outcome"]): p.value for k, p in requests.items()
    }
    assert by_outcome == {("primary", "ok"): 1, ("primary", "5xx"): 2, ("backup", "ok"): 1}
    fallbacks = points(reader, "rakka.fallbacks")
    assert [dict(k) for k in fallbacks] == [
        {
            "rakka.deployment": "chat",
            "rakka.endpoint": "primary",
            "rakka.to": "backup",
            "rakka.cause": "ServerError",
        }
    ]
    durations = points(reader, "gen_ai.client.operation.duration")
    assert sum(p.count for p in durations.values()) == 4


async def test_without_opentelemetry_nothing_is_sent(
    mock: MockProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def no_opentelemetry(name: str, *args: Any) -> Any:
        return None if name.startswith("opentelemetry") else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_opentelemetry)
    assert _otel.TelemetrySwitch.from_environment().current is None
    with trio.fail_after(20):
        async with rk.open_supervisor(config(mock)) as sup:
            assert sup._telemetry.current is None
            assert (await sup.endpoint("primary").complete(HI)).text == "one two three"
            with pytest.raises(rk.MissingExtra, match=r"rakka-trio\[otel\]"):
                rk.instrument_opentelemetry(sup)
