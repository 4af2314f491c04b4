"""The incident view in ``statistics()``: rolling rates per endpoint and per deployment,
incident outcome labels, error and success rates, the limiter split by limit, deployments'
serving counts and the supervisor's bounded history (deterministic time: MockClock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import rakka_trio as rk
from rakka_trio._accounting import (
    INCIDENT_OUTCOMES,
    CostTracker,
    DeploymentMeter,
    EndpointMeter,
    PriceTable,
)
from rakka_trio._control import _protocol as proto
from rakka_trio._control._incident import recent_state
from rakka_trio._control._incident_text import limiter_cell, sparkline
from rakka_trio._history import HISTORY_SIZE
from rakka_trio_tui._incident_view import limit_piece

pytestmark = pytest.mark.trio


def meter(bucket: float = 10.0) -> EndpointMeter:
    return EndpointMeter(
        "a", CostTracker("a", rk.BudgetConfig(), PriceTable({})), bucket_seconds=bucket
    )


def served_after_a_503(m: EndpointMeter) -> None:
    call = m.begin("model")
    call.attempt_started()
    call.attempt_failed(rk.ServerError("upstream 503", status=503))
    call.retried()
    call.attempt_started()
    call.end(None)


def failed(m: EndpointMeter, exc: BaseException) -> None:
    call = m.begin("model")
    call.attempt_started()
    call.attempt_failed(exc)
    call.end(exc)


async def test_endpoint_rates_by_outcome_over_the_last_window(
    mock_clock: trio.testing.MockClock,
) -> None:
    m = meter()
    await trio.sleep_until(100.0)
    for i in range(20):  # 2 requests/s for 10 s, each served on its second try
        await trio.sleep_until(100.0 + i * 0.5)
        served_after_a_503(m)
    await trio.sleep_until(110.0)
    recent = m.snapshot().recent
    assert recent is not None
    assert dict(recent.requests) == {"ok": pytest.approx(2.0)}
    assert dict(recent.attempts) == {"ok": pytest.approx(2.0), "5xx": pytest.approx(2.0)}
    assert recent.retries == pytest.approx(2.0)
    assert recent.error_rate == 0.0
    assert len(recent.requests_series) == 30 and recent.requests_series[-2:] == (20, 0)
    assert sum(recent.errors_series) == 0

    # A storm: every request fails for 5 s. Half a window later the estimate weighs the
    # healthy bucket by the half of it still inside the window.
    for i in range(10):
        await trio.sleep_until(110.0 + i * 0.5)
        failed(m, rk.ServerError("upstream 503", status=503))
    await trio.sleep_until(115.0)
    recent = m.snapshot().recent
    assert recent is not None
    assert recent.requests["5xx"] == pytest.approx(1.0)
    assert recent.requests["ok"] == pytest.approx(1.0)
    assert recent.error_rate == pytest.approx(0.5)
    assert recent.errors_series[-1] == 10 and recent.requests_series[-1] == 10
    # On the wire: leading empty buckets left out, both series ending on the same bucket.
    wire = recent_state(m.snapshot())
    assert wire is not None
    assert wire.requests_series == [20, 10] and wire.errors_series == [0, 10]
    assert sparkline(wire.requests_series, 4) == "▁▁█▅"

    # Five minutes of silence: nothing left to show.
    await trio.sleep(301.0)
    quiet = m.snapshot().recent
    assert quiet is not None
    assert quiet.requests == {} and quiet.requests_series == () and quiet.error_rate is None


async def test_incident_labels_and_what_counts_as_an_error(
    mock_clock: trio.testing.MockClock,
) -> None:
    m = meter()
    await trio.sleep_until(50.0)
    failed(m, rk.StreamTruncated("cut"))
    failed(m, rk.RateLimitExceeded("own limiter", key="k", wait=1.0))
    failed(m, rk.RateLimited("provider 429"))
    m.count("backpressure")
    m.count("budget")
    call = m.begin("model")
    call.attempt_started()
    call.end(None, complete=False)  # the caller left early: cancelled
    call = m.begin("model")
    call.attempt_started()
    await trio.sleep(0.25)
    call.end(None)
    await trio.sleep_until(60.0)
    recent = m.snapshot().recent
    assert recent is not None
    counts = {label: round(rate * 10) for label, rate in recent.requests.items()}
    assert counts == {"truncated": 1, "rejected": 3, "429": 1, "cancelled": 1, "ok": 1}
    assert set(counts) <= set(INCIDENT_OUTCOMES)
    # The running totals keep their own labels.
    assert m.requests["network"] == 1 and m.requests["429"] == 2 and m.requests["budget"] == 1
    # Errors: truncated, rejected x3, 429 out of 6 (the cancelled request is left out).
    assert recent.error_rate == pytest.approx(5 / 6)
    assert recent.latency_p50 == pytest.approx(0.25)


async def test_deployment_success_rate_and_fallbacks_per_second(
    mock_clock: trio.testing.MockClock,
) -> None:
    d = DeploymentMeter("chat", bucket_seconds=10.0)
    await trio.sleep_until(200.0)
    for i in range(40):
        await trio.sleep_until(200.0 + i * 0.25)
        d.fallback("primary", "backup", "CircuitOpen" if i % 4 else "ServerError")
        d.count("ok")
    d.count("cancelled")
    d.count("backpressure", rk.Backpressure("full"))
    await trio.sleep_until(210.0)
    snap = d.snapshot(("primary", "backup"))
    recent = snap.recent
    assert recent is not None
    assert recent.success_rate == pytest.approx(40 / 41)
    assert dict(recent.fallbacks) == {
        ("primary", "backup", "CircuitOpen"): pytest.approx(3.0),
        ("primary", "backup", "ServerError"): pytest.approx(1.0),
    }
    assert recent.requests["rejected"] == pytest.approx(0.1)
    assert snap.fallback_routes[("primary", "backup", "CircuitOpen")] == 30
    assert snap.requests["ok"] == 40 and snap.requests["backpressure"] == 1


def two_endpoints(**limits: object) -> rk.SupervisorConfig:
    return rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(
                name=n,
                provider="openai",
                base_url="http://127.0.0.1:1",
                limits=rk.RateLimits(**limits),  # type: ignore[arg-type]
            )
            for n in ("a", "b")
        ],
        deployments=[rk.DeploymentConfig(name="chat", endpoints=["a", "b"])],
        stats_interval=3600.0,
    )


async def test_every_deployment_is_listed_with_the_endpoints_that_can_serve(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with rk.open_supervisor(two_endpoints(requests_per_minute=600)) as sup:
        chat = sup.statistics().deployments["chat"]  # before its first request
        assert chat.serving == 2 and chat.endpoints == ("a", "b")
        sup.force_open("a", 60.0)
        assert sup.statistics().deployments["chat"].serving == 1
        sup.limiter("b").observe_rate_limited(5.0)  # a 429 pauses b's key
        assert sup.statistics().deployments["chat"].serving == 0
        await trio.sleep(5.5)
        assert sup.statistics().deployments["chat"].serving == 1
        snap = proto.snapshot_from_statistics(sup.statistics())
        assert snap.deployments is not None
        assert [(d.name, d.serving, d.endpoints) for d in snap.deployments] == [
            ("chat", 1, ["a", "b"])
        ]


async def test_limiter_use_names_the_limit_and_the_provider_lowering(
    mock_clock: trio.testing.MockClock,
) -> None:
    config = two_endpoints(
        requests_per_minute=60_000, tokens_per_minute=2_000_000, max_concurrent=4
    )
    async with rk.open_supervisor(config) as sup:
        # The provider says its limit is 1000 a minute and only 15 are left: the configured
        # 60000 is lowered, and the bucket holds what the provider says remains.
        sup.limiter("a").observe_headers(
            {"x-ratelimit-limit-requests": "1000", "x-ratelimit-remaining-requests": "15"}
        )
        use = sup.statistics().endpoints["a"].metrics.limits  # type: ignore[union-attr]
        assert use is not None and use.paused_until is None
        by_name = {lim.name: lim for lim in use.limits}
        assert set(by_name) == {"rpm", "tpm", "concurrency"}
        rpm = by_name["rpm"]
        assert (rpm.limit, rpm.configured, rpm.lowered) == (1000, 60_000, True)
        # A request limit holds ten seconds' worth: the lowered bucket is ceil(1000 / 6) = 167
        # requests, of which 15 remain.
        assert rpm.used == pytest.approx(1 - 15 / 167, abs=0.002)
        assert not by_name["tpm"].lowered and by_name["tpm"].used < 0.01
        assert by_name["concurrency"].limit == 4 and by_name["concurrency"].used == 0.0
        assert use.busiest is rpm

        def shown() -> proto.EndpointState:
            snap = proto.snapshot_from_statistics(sup.statistics())
            return next(e for e in snap.endpoints if e.name == "a")

        ep = shown()
        assert limiter_cell(ep) in ("RPM 91% lowered", "RPM 92% lowered")
        assert limit_piece(ep)[0] in ("RPM 91%↓", "RPM 92%↓")
        assert ep.limiter is not None
        assert [(lim.name, lim.limit, lim.configured) for lim in ep.limiter.limits] == [
            ("rpm", 1000, 60_000),
            ("tpm", 2_000_000, 2_000_000),
            ("concurrency", 4, 4),
        ]

        sup.limiter("a").observe_rate_limited(5.0)
        ep = shown()
        assert ep.limiter is not None and ep.limiter.paused_for == pytest.approx(5.0)
        assert limiter_cell(ep) == "paused 5.0s"
        assert limit_piece(ep)[0] == "paused 5s"
        assert 'rakka_limiter_paused{endpoint="a"} 1' in rk.prometheus_text(sup)
        assert 'rakka_limiter_limit{endpoint="a",limit="rpm"} 1000' in rk.prometheus_text(sup)


async def test_history_keeps_the_last_200_transitions_and_commands(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with rk.open_supervisor(two_endpoints()) as sup:
        assert sup.history() == ()
        for i in range(150):
            sup.force_open("a", 60.0, reason=f"drill {i}")
            sup.reset("a")
        history = sup.history()
        assert len(history) == HISTORY_SIZE == 200
        # Oldest first, the newest last: each round is command, transition, command,
        # transition (force_open, then reset).
        assert isinstance(history[-1], rk.Transition) and history[-1].cause == "reset"
        assert isinstance(history[-2], rk.Command) and history[-2].command == "reset"
        assert isinstance(history[0], rk.Command) and history[0].command == "force_open"
        assert history[0].reason == "drill 100"
        assert [e.at for e in history] == sorted(e.at for e in history)
        frames = proto.history_frames(history)
        assert len(frames) == 200
        assert isinstance(frames[-1], proto.TransitionFrame) and frames[-1].to_state == "closed"


async def test_new_frame_fields_are_optional_for_v1_clients() -> None:
    # A frame from an older server (no incident fields) still decodes, with nulls.
    old = (
        '{"type":"welcome","protocol":1,"role":"viewer","server":"s","stats_interval":1.0,'
        '"snapshot":{"node_id":"n","wall":1.0,"endpoints":[]}}'
    )
    welcome = proto.decode_server_frame(old)
    assert isinstance(welcome, proto.WelcomeFrame)
    assert welcome.history is None and welcome.snapshot.deployments is None
    # A newer server's frame round-trips; the history entries keep their type tags.
    async with rk.open_supervisor(two_endpoints()) as sup:
        sup.force_open("a", 30.0, reason="x")
        frame = proto.WelcomeFrame(
            protocol=1,
            role="viewer",
            server="s",
            stats_interval=1.0,
            snapshot=proto.snapshot_from_statistics(sup.statistics()),
            history=proto.history_frames(sup.history()),
        )
    text = proto.encode(frame)
    assert '"type":"command"' in text and '"type":"transition"' in text
    assert proto.decode_server_frame(text) == frame
