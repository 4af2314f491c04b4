"""Metrics checked against known traffic, latency percentiles, the stats feed and the
Prometheus text exposition."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator

import pytest
import trio

import rakka_trio as rk
from rakka_trio._accounting import LATENCY_BUCKETS, Latency, outcome_of
from rakka_trio._control._protocol import StatsFrame, frame_from_event
from rakka_trio.testing import Fault, MockProvider, serve_mock_provider

pytestmark = pytest.mark.trio

REPLY = "one two three four five six seven eight nine"  # 9 output tokens at the mock
HI = rk.ChatRequest(messages=[{"role": "user", "content": "hi"}])  # 1 input token
PRICE = rk.ModelPrice(input=100_000.0, output=200_000.0)  # one call: $0.10 + $1.80


async def test_outcome_labels() -> None:
    cases: list[tuple[BaseException | None, str]] = [
        (None, "ok"),
        (rk.RateLimited("x"), "429"),
        (rk.QuotaExhausted("x"), "429"),
        (rk.RateLimitExceeded("x", key="k", wait=1.0), "429"),
        (rk.ServerError("x", status=503), "5xx"),
        (rk.Overloaded("x"), "5xx"),
        (rk.Timeout(phase="read_gap"), "timeout"),
        (rk.ContentFiltered("x"), "filtered"),
        (rk.CircuitOpen("a", state="open", opened_at=0.0, retry_at=1.0), "circuit_open"),
        (rk.Backpressure("x"), "backpressure"),
        (rk.BudgetExceeded("x"), "budget"),
        (rk.NetworkError("x"), "network"),
        (rk.StreamTruncated("x"), "network"),
        (rk.BadRequest("x", status=400), "4xx"),
        (rk.ContextLengthExceeded("x"), "4xx"),
        (rk.UnknownEndpoint("x"), "error"),
        (trio.BrokenResourceError(), "cancelled"),
        (KeyboardInterrupt(), "cancelled"),
    ]
    for exc, label in cases:
        assert outcome_of(exc) == label, exc
        assert label in rk.OUTCOMES
    assert outcome_of(None, "content_filter") == "filtered"


async def test_latency_percentiles_over_recent_samples() -> None:
    latency = Latency()
    assert latency.summary().p50 is None
    for ms in range(1, 101):
        latency.record(ms / 1000)
    summary = latency.summary()
    assert (summary.p50, summary.p95, summary.p99) == (0.050, 0.095, 0.099)
    assert summary.count == 100 and summary.total == pytest.approx(5.05)
    # Cumulative buckets: <=5 ms, <=10 ms, <=25 ms, <=50 ms, <=100 ms ... +Inf.
    assert summary.buckets[:5] == (5, 10, 25, 50, 100)
    assert summary.buckets[-1] == 100
    # Bounded: only the most recent 512 samples make the percentiles.
    for _ in range(600):
        latency.record(10.0)
    assert latency.summary().p50 == 10.0 and latency.summary().count == 700


@pytest.fixture
async def mock() -> AsyncIterator[MockProvider]:
    provider = MockProvider(reply=REPLY, chunks=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_mock_provider, provider)
        yield provider
        nursery.cancel_scope.cancel()


def config(mock: MockProvider, **kw: object) -> rk.SupervisorConfig:
    return rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(
                name="a",
                provider="openai",
                base_url=mock.base_url_for("openai"),
                model="priced",
                prices={"priced": PRICE},
                retry=rk.RetryPolicy(max_retries=0),
                timeouts=rk.Timeouts(first_byte=0.3),
                engine=rk.EngineConfig(max_concurrent=1, queue_size=0, on_full="reject"),
            )
        ],
        **kw,  # type: ignore[arg-type]
    )


async def known_traffic(sup: rk.Supervisor, mock: MockProvider) -> None:
    """5 ok, 2 x 5xx, 1 x 429, 1 filtered, 1 cancelled, 1 timeout, 1 circuit_open and
    1 backpressure, one at a time."""
    ep = sup.endpoint("a")
    for _ in range(3):
        assert (await ep.complete(HI)).text == REPLY
    async with ep.stream(HI) as chunks:
        assert "".join([c.text async for c in chunks]) == REPLY
    mock.add_fault("openai", Fault.status(503), times=2)
    for _ in range(2):
        with pytest.raises(rk.ServerError):
            await ep.complete(HI)
    mock.add_fault("openai", Fault.rate_limited(retry_after=0.01), times=1)
    with pytest.raises(rk.RateLimited):
        await ep.complete(HI)
    await trio.sleep(0.02)  # the limiter pauses the key for the Retry-After
    mock.add_fault("openai", Fault.content_filter(after_chunks=1), times=1)
    with pytest.raises(rk.ContentFiltered):
        await ep.complete(HI)
    async with ep.stream(HI) as chunks:
        async for _ in chunks:
            break  # the caller leaves early
    mock.add_fault("openai", Fault.slow_first_byte(2.0), times=1)
    with pytest.raises(rk.Timeout):
        await ep.complete(HI)
    sup.force_open("a", 60.0)
    with pytest.raises(rk.CircuitOpen):
        await ep.complete(HI)
    sup.reset("a")
    first = await ep.submit(HI)
    with pytest.raises(rk.Backpressure):
        await ep.submit(HI)  # one worker, no queue, policy reject
    async with first:
        assert (await first.result()).text == REPLY


async def test_metrics_match_known_traffic(mock: MockProvider) -> None:
    with trio.fail_after(15):
        async with rk.open_supervisor(config(mock)) as sup:
            await known_traffic(sup, mock)
            stats = sup.statistics().endpoints["a"]
    m = stats.metrics
    assert m is not None
    assert dict(m.requests) == {
        "ok": 5,
        "429": 1,
        "5xx": 2,
        "timeout": 1,
        "filtered": 1,
        "circuit_open": 1,
        "backpressure": 1,
        "budget": 0,
        "network": 0,
        "4xx": 0,
        "cancelled": 1,
        "error": 0,
    }
    # The first chunk arrived for the 5 ok, the filtered and the cancelled calls; latency
    # covers completed calls (ok and filtered); one request went through the engine queue.
    assert (m.ttft.count, m.latency.count, m.queue_wait.count) == (7, 6, 1)
    assert m.ttft.p50 is not None and m.latency.p50 is not None
    # Different populations (ttft also covers the cancelled call), so no order between the
    # two medians is guaranteed; each is a real, small, loopback duration.
    assert 0 < m.ttft.p50 < 1.0 and 0 < m.latency.p50 < 1.0
    assert m.tokens.output >= 5 * 9 and m.tokens.input >= 5
    ok_cost = 5 * (0.10 + 1.80)
    assert m.cost >= ok_cost - 1e-9
    assert m.cost == pytest.approx(0.10 * m.tokens.input + 0.20 * m.tokens.output)
    assert (m.in_flight, m.queue_depth, m.busy_workers) == (0, 0, 0)
    assert (m.workers, m.max_concurrent) == (1, 1)
    assert m.breaker_state == "closed"
    assert m.limiter_utilization is not None and 0.0 <= m.limiter_utilization <= 1.0
    # The flat fields the control feed reads.
    assert (stats.in_flight, stats.queue_depth) == (0, 0)
    assert stats.latency_p50 == m.latency.p50 and stats.latency_p99 == m.latency.p99


async def test_tokens_and_cost_of_clean_traffic(mock: MockProvider) -> None:
    with trio.fail_after(10):
        async with rk.open_supervisor(config(mock)) as sup:
            for _ in range(4):
                await sup.endpoint("a").complete(HI)
            for _ in range(2):
                async with await sup.endpoint("a").submit(HI) as sub:
                    await sub.result()
            m = sup.statistics().endpoints["a"].metrics
    assert m is not None
    assert m.tokens == rk.TokenTotals(input=6, output=54, cached=0, reasoning=0)
    assert m.cost == pytest.approx(6 * 1.90)
    assert m.budget.hour == pytest.approx(6 * 1.90) and m.budget.unpriced == 0
    assert m.requests["ok"] == 6


async def test_stats_events_carry_the_metrics(mock: MockProvider) -> None:
    with trio.fail_after(10):
        async with rk.open_supervisor(config(mock, stats_interval=0.05)) as sup:
            await sup.endpoint("a").complete(HI)
            async with sup.open_subscription() as events:
                async for event in events:
                    if isinstance(event, rk.Stats):
                        break
    assert isinstance(event, rk.Stats)
    stats = event.statistics.endpoints["a"]
    assert stats.metrics.requests["ok"] == 1
    frame = frame_from_event(event)
    assert isinstance(frame, StatsFrame)
    (state,) = frame.endpoints
    assert (state.in_flight, state.queue_depth) == (0, 0)
    assert state.latency_p50 == pytest.approx(stats.latency_p50, abs=1e-4)
    assert state.limiter_utilization is not None


_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*)\} '
    r"(?P<value>[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|Inf|NaN))$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse the exposition strictly: HELP and TYPE before each family's samples, which are
    contiguous, every line ``name{labels} value``."""
    assert text.endswith("\n")
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    types: dict[str, str] = {}
    current: str | None = None
    finished: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            family = line.split(" ", 3)[2]
            assert family not in types and family not in finished
            if current is not None:
                finished.add(current)
            current = family
            continue
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ")
            assert family == current and kind in ("counter", "gauge", "histogram")
            types[family] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name = match["name"]
        assert current is not None
        allowed = {current}
        if types[current] == "histogram":
            allowed = {f"{current}_bucket", f"{current}_sum", f"{current}_count"}
        assert name in allowed, (name, current)
        labels = frozenset(_LABEL.findall(match["labels"]))
        key = (name, labels)
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(match["value"])
    return samples


async def test_prometheus_text_parses_and_matches(mock: MockProvider) -> None:
    idle = rk.EndpointConfig(
        name="idle", provider="anthropic", base_url=mock.base_url_for("anthropic")
    )
    cfg = rk.SupervisorConfig(
        endpoints=[*config(mock).endpoints, idle],
        deployments=[rk.DeploymentConfig(name="chat", endpoints=["idle", "a"])],
    )
    with trio.fail_after(15):
        async with rk.open_supervisor(cfg) as sup:
            await known_traffic(sup, mock)
            sup.force_open("idle", 60.0)
            assert (await sup.deployment("chat").complete(HI)).endpoint == "a"
            text = rk.prometheus_text(sup)
            stats = sup.statistics()
    samples = parse_prometheus(text)

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    m = stats.endpoints["a"].metrics
    assert m is not None
    for outcome, count in m.requests.items():
        assert value("rakka_requests_total", endpoint="a", outcome=outcome) == count
    assert value("rakka_requests_total", endpoint="a", outcome="5xx") == 2
    assert value("rakka_tokens_total", endpoint="a", kind="output") == m.tokens.output
    assert value("rakka_cost_usd_total", endpoint="a") == pytest.approx(m.cost)
    assert value("rakka_breaker_state", endpoint="idle", state="forced_open") == 1
    assert value("rakka_breaker_state", endpoint="idle", state="closed") == 0
    assert value("rakka_queue_depth", endpoint="a") == 0
    assert value("rakka_workers_limit", endpoint="a") == 1
    assert value("rakka_deployment_requests_total", deployment="chat", outcome="ok") == 1
    fallbacks = value(
        "rakka_deployment_fallbacks_total",
        deployment="chat",
        endpoint="idle",
        to="a",
        reason="CircuitOpen",
    )
    assert fallbacks == 1
    for outcome, count in m.attempts.items():
        assert value("rakka_attempts_total", endpoint="a", outcome=outcome) == count
    assert value("rakka_retries_total", endpoint="a") == m.retries
    # Histograms: cumulative, ending in +Inf == _count.
    for metric in ("rakka_ttft_seconds", "rakka_request_duration_seconds"):
        counts = [
            value(f"{metric}_bucket", endpoint="a", le=le)
            for le in [*(_le(b) for b in LATENCY_BUCKETS), "+Inf"]
        ]
        assert counts == sorted(counts)
        assert counts[-1] == value(f"{metric}_count", endpoint="a")
    assert value("rakka_request_duration_seconds_count", endpoint="a") == m.latency.count
    assert value("rakka_request_duration_recent_seconds", endpoint="a", quantile="0.5") == (
        pytest.approx(m.latency.p50)
    )
    assert not math.isnan(value("rakka_limiter_utilization", endpoint="a"))


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


async def test_prometheus_label_values_are_escaped() -> None:
    from rakka_trio._accounting._prometheus import _Families

    out = _Families()
    out.add("rakka_x", "gauge", "help", {"endpoint": 'a"b\\c\nd'}, 1.5)
    text = out.render()
    samples = parse_prometheus(text)
    ((_, labels),) = samples
    assert dict(labels) == {"endpoint": 'a\\"b\\\\c\\nd'}
