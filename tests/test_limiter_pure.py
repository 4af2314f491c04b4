"""Rate limiter: the synchronous pieces (costs, model families, headers, specs, config)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

import rakka_trio as rk
from rakka_trio._limits._cost import INPUT_TOKENS, OUTPUT_TOKENS, REQUESTS, TOKENS
from rakka_trio._limits._gcra import Gcra, KeySpec
from rakka_trio._limits._headers import parse_rate_limit_headers


def test_cost_vector_and_validation() -> None:
    c = rk.Cost(input_tokens=100, output_tokens=50)
    assert (c.requests, c.tokens) == (1, 150)
    assert c._v == (1, 150, 100, 50)
    assert rk.Cost() == rk.Cost(requests=1)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="must be an integer >= 0"):
            rk.Cost(input_tokens=bad)  # type: ignore[arg-type]
    usage = rk.Usage(input_tokens=7, output_tokens=3)
    assert rk.Cost.from_usage(usage) == rk.Cost(input_tokens=7, output_tokens=3)
    assert rk.Cost.from_usage(usage, requests=0).requests == 0


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("gpt-4o", "gpt-4o"),
        ("o1-2024-12-17", "o1"),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("claude-3-opus-latest", "claude-3-opus"),
        ("models/gemini-1.5-flash-001", "gemini-1.5-flash"),
        ("anthropic.claude-3-sonnet-20240229-v1:0", "anthropic.claude-3-sonnet"),
        ("GPT-4O", "gpt-4o"),
        ("weird {name}", "weird__name_"),
        (None, "default"),
        ("", "default"),
    ],
)
def test_model_family(model: str | None, family: str) -> None:
    assert rk.model_family(model) == family


def test_openai_headers() -> None:
    hints = parse_rate_limit_headers(
        {
            "X-RateLimit-Limit-Requests": "10000",
            "x-ratelimit-remaining-requests": "9990",
            "x-ratelimit-reset-requests": "6ms",
            "x-ratelimit-limit-tokens": "2000000",
            "x-ratelimit-remaining-tokens": "1999000",
            "x-ratelimit-reset-tokens": "1m30.5s",
        }
    )
    assert hints[REQUESTS].limit == 10000
    assert hints[REQUESTS].remaining == 9990
    assert hints[REQUESTS].reset == pytest.approx(0.006)
    assert hints[TOKENS].reset == pytest.approx(90.5)
    assert INPUT_TOKENS not in hints


def test_anthropic_headers_with_rfc3339_reset() -> None:
    wall = datetime(2025, 1, 1, 0, 0, 0, tzinfo=UTC).timestamp()
    hints = parse_rate_limit_headers(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2025-01-01T00:00:12Z",
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-input-tokens-remaining": "39000",
            "anthropic-ratelimit-output-tokens-remaining": "8000",
        },
        wall=wall,
    )
    assert hints[REQUESTS].remaining == 0
    assert hints[REQUESTS].reset == pytest.approx(12.0)
    assert hints[INPUT_TOKENS].limit == 40000
    assert hints[OUTPUT_TOKENS].remaining == 8000
    assert hints[OUTPUT_TOKENS].limit is None


def test_garbage_headers_are_ignored() -> None:
    hints = parse_rate_limit_headers(
        {
            "x-ratelimit-limit-requests": "lots",
            "x-ratelimit-remaining-requests": "-3",
            "x-ratelimit-reset-requests": "soon",
            "content-type": "text/event-stream",
        }
    )
    assert hints == {}


def test_spec_reads_limits_bursts_and_merges_to_the_stricter() -> None:
    a = KeySpec.from_limits(rk.RateLimits(requests_per_minute=600, tokens_per_minute=1000))
    assert a.dims == (REQUESTS, TOKENS)
    assert a.bursts[REQUESTS] == 100  # ten seconds' worth by default (was one minute's)
    assert a.bursts[TOKENS] == 1000  # tokens: one minute's worth
    b = KeySpec.from_limits(
        rk.RateLimits(requests_per_minute=100, requests_burst=10, max_concurrent=4)
    )
    assert b.bursts[REQUESTS] == 10
    merged = a.merge(b)
    assert merged.limits[REQUESTS] == 100
    assert merged.bursts[REQUESTS] == 10
    assert merged.limits[TOKENS] == 1000
    assert merged.max_concurrent == 4


def test_config_validates_the_new_fields() -> None:
    with pytest.raises(rk.ConfigError, match="requests_burst: needs requests_per_minute"):
        rk.RateLimits(requests_burst=5)
    with pytest.raises(rk.ConfigError, match="node_ttl"):
        rk.RateLimits(sync_interval=5.0, node_ttl=6.0)
    with pytest.raises(rk.ConfigError, match="needs redis_url"):
        rk.SupervisorConfig(
            endpoints=[
                rk.EndpointConfig(
                    name="a",
                    provider="openai",
                    base_url="http://127.0.0.1:1",
                    limits=rk.RateLimits(mode="strict"),
                )
            ]
        )
    loaded = rk.SupervisorConfig.from_dict(
        {
            "redis_url": "redis://127.0.0.1:6379/0",
            "redis_timeout": 0.1,
            "endpoints": [
                {
                    "name": "a",
                    "provider": "openai",
                    "base_url": "http://127.0.0.1:1",
                    "limits": {
                        "requests_per_minute": 60,
                        "requests_burst": 5,
                        "mode": "approximate",
                    },
                }
            ],
        }
    )
    assert loaded.endpoints[0].limits.requests_burst == 5
    assert loaded.redis_timeout == 0.1


def test_gcra_refills_continuously_and_holds_one_burst() -> None:
    g = Gcra((REQUESTS,), [60.0, 0, 0, 0], [10.0, 0, 0, 0], now=0.0)
    one = (1, 0, 0, 0)
    for _ in range(10):
        assert g.take(one, 0.0) == 0.0
    assert g.take(one, 0.0) == pytest.approx(1.0)  # 60/min: one per second
    assert g.take(one, 0.5) == pytest.approx(0.5)
    assert g.take(one, 1.0) == 0.0
    assert g.level(0, 1000.0) == pytest.approx(10.0)  # never more than the burst
    g.adjust([3.0, 0, 0, 0], 1000.0)  # a debt
    assert g.level(0, 1000.0) == pytest.approx(7.0)
    g.adjust([-100.0, 0, 0, 0], 1000.0)  # a refund beyond the burst is capped
    assert g.level(0, 1000.0) == pytest.approx(10.0)
    assert g.clamp(0, 2, 1000.0)
    assert g.level(0, 1000.0) == pytest.approx(2.0)
    assert not g.clamp(0, 5, 1000.0)  # clamping never raises
    g.set_rate(0, 30.0, 4.0, 1000.0)
    assert g.level(0, 1000.0) == pytest.approx(2.0)
    assert g.level(0, 1004.0) == pytest.approx(4.0)
    assert g.fits((5, 0, 0, 0)) == REQUESTS
    assert g.fits((4, 0, 0, 0)) is None
    assert math.isclose(g.wait((4, 0, 0, 0), 1004.0, [2.0, 0, 0, 0]), 4.0)
