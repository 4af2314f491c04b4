"""Configuration: validation on construction, loading from dicts and TOML, credentials."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import trio

import rakka_trio as rk

GOOD = {
    "node_id": "node-a",
    "endpoints": [
        {
            "name": "openai-primary",
            "provider": "openai",
            "base_url": "https://api.openai.com/v1",
            "credential": {"env": "OPENAI_API_KEY"},
            "breaker": {"failure_threshold": 10, "open_duration": 30, "half_open_max_probes": 1},
            "retry": {"max_retries": 3, "jitter": "equal", "per_error": {"Timeout": 1}},
            "limits": {"requests_per_minute": 10000, "tokens_per_minute": 2000000},
            "timeouts": {"connect": 5},
        },
        {
            "name": "anthropic-backup",
            "provider": "anthropic",
            "base_url": "https://api.anthropic.com",
            "credential": {"file": "/run/secrets/anthropic"},
        },
    ],
    "deployments": [{"name": "chat", "endpoints": ["openai-primary", "anthropic-backup"]}],
}


def test_defaults_tests_rely_on() -> None:
    cfg = rk.BreakerConfig()
    assert (cfg.half_open_max_probes, cfg.success_threshold) == (1, 1)


def test_load_from_dict() -> None:
    cfg = rk.SupervisorConfig.from_dict(GOOD)
    ep = cfg.endpoints[0]
    assert ep.breaker.failure_threshold == 10
    assert ep.breaker.open_duration == 30.0 and isinstance(ep.breaker.open_duration, float)
    assert ep.credential == rk.EnvCredential("OPENAI_API_KEY")
    assert ep.retry.per_error == {"Timeout": 1}
    assert ep.timeouts.connect == 5.0
    assert cfg.endpoints[1].credential == rk.FileCredential("/run/secrets/anthropic")
    assert cfg.deployments[0].endpoints == ["openai-primary", "anthropic-backup"]
    assert cfg.node_id == "node-a"


def test_round_trip_through_dict() -> None:
    cfg = rk.SupervisorConfig.from_dict(GOOD)
    assert rk.SupervisorConfig.from_dict(cfg.to_dict()) == cfg


def test_load_toml(tmp_path: Path) -> None:
    path = tmp_path / "rakka.toml"
    path.write_text(
        """
node_id = "n1"

[[endpoints]]
name = "local"
provider = "openai-compatible"
base_url = "http://127.0.0.1:8000/v1"

[endpoints.breaker]
failure_threshold = 3
window_type = "time"
window_duration = 30

[endpoints.limits]
requests_per_minute = 600
mode = "local"
"""
    )
    cfg = rk.load_config(path)
    assert cfg.endpoints[0].breaker.window_type == "time"
    assert cfg.endpoints[0].limits.requests_per_minute == 600
    assert rk.SupervisorConfig.from_toml(path) == cfg


def test_every_bad_field_is_reported_at_once() -> None:
    bad = {
        "endpoints": [
            {
                "name": "has space",
                "provider": "opnai",
                "base_url": "ftp://x",
                "credential": {"envv": "K"},
                "breaker": {"open_duration": -1, "failure_treshold": 3, "open_duration_max": "x"},
                "limits": {"requests_per_minute": 1.5, "mode": "exact"},
            },
            {"name": "b"},
        ],
        "event_buffer": True,
        "bogus": 1,
    }
    with pytest.raises(rk.ConfigError) as info:
        rk.SupervisorConfig.from_dict(bad)
    paths = dict(info.value.errors)
    assert set(paths) == {
        "$.bogus",
        "$.event_buffer",
        "$.endpoints[0].name",
        "$.endpoints[0].provider",
        "$.endpoints[0].base_url",
        "$.endpoints[0].credential",
        "$.endpoints[0].breaker.failure_treshold",
        "$.endpoints[0].breaker.open_duration",
        "$.endpoints[0].breaker.open_duration_max",
        "$.endpoints[0].limits.requests_per_minute",
        "$.endpoints[0].limits.mode",
        "$.endpoints[1].provider",
        "$.endpoints[1].base_url",
    }
    assert "did you mean 'failure_threshold'" in paths["$.endpoints[0].breaker.failure_treshold"]
    text = str(info.value)
    assert "13 problems" in text
    assert "$.endpoints[0].limits.mode: must be one of local, approximate, strict" in text


def test_cross_field_rules() -> None:
    with pytest.raises(rk.ConfigError, match="open_duration_max: must be >= open_duration"):
        rk.BreakerConfig(open_duration=60, open_duration_max=30)
    with pytest.raises(rk.ConfigError, match="slow_call_duration"):
        rk.BreakerConfig(slow_call_rate_threshold=0.5)
    data = {
        "endpoints": [
            {"name": "a", "provider": "openai", "base_url": "http://x"},
            {"name": "a", "provider": "openai", "base_url": "http://y"},
        ],
        "deployments": [{"name": "d", "endpoints": ["a", "ghost"]}],
        "redis_url": "http://not-redis",
    }
    with pytest.raises(rk.ConfigError) as info:
        rk.SupervisorConfig.from_dict(data)
    assert dict(info.value.errors) == {
        "$.endpoints[1].name": "duplicate endpoint name 'a'",
        "$.deployments[0].endpoints[1]": "unknown endpoint 'ghost'",
        "$.redis_url": "must start with redis:// or rediss://",
    }


def test_direct_construction_is_validated_and_frozen() -> None:
    with pytest.raises(rk.ConfigError, match="failure_threshold: must be >= 1"):
        rk.BreakerConfig(failure_threshold=0)
    with pytest.raises(rk.ConfigError, match="must be an integer"):
        rk.BreakerConfig(failure_threshold=True)
    with pytest.raises(rk.ConfigError, match=r"per_error\.Bogus"):
        rk.RetryPolicy(per_error={"Bogus": 1})
    with pytest.raises(TypeError):
        rk.BreakerConfig(3)  # type: ignore[call-arg]  # keyword-only
    cfg = rk.BreakerConfig()
    with pytest.raises(AttributeError):
        cfg.failure_threshold = 3  # type: ignore[misc]
    assert isinstance(rk.ConfigError("x"), ValueError)


def test_unreadable_or_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(rk.ConfigError, match="cannot read"):
        rk.load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[[endpoints]\nname=")
    with pytest.raises(rk.ConfigError, match="not valid TOML"):
        rk.load_config(broken)


def test_secret_never_shows_its_value() -> None:
    s = rk.Secret("sk-test-1234567890abcdef")
    for text in (repr(s), str(s), f"{s}", f"{s!r}", f"{s:>40}", repr([s]), repr({"k": s})):
        assert "1234567890" not in text
    assert s.get_secret_value() == "sk-test-1234567890abcdef"
    assert len(s.fingerprint) == 12 and "1234567890" not in s.fingerprint
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(s)
    assert s == rk.Secret("sk-test-1234567890abcdef")
    assert s != rk.Secret("other")


def test_static_credential_masked_in_repr_and_dump() -> None:
    cred = rk.StaticCredential(value="sk-live-zzzzzzzzzzzzzzzz")
    ep = rk.EndpointConfig(name="a", provider="openai", base_url="http://x", credential=cred)
    cfg = rk.SupervisorConfig(endpoints=[ep])
    assert "zzzzzzzz" not in repr(cfg)
    assert "zzzzzzzz" not in str(cfg.to_dict())


@pytest.mark.trio
async def test_credential_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAKKA_TEST_KEY", "env-secret-value")
    assert (await rk.EnvCredential("RAKKA_TEST_KEY").resolve()).get_secret_value() == (
        "env-secret-value"
    )
    monkeypatch.delenv("RAKKA_TEST_KEY")
    with pytest.raises(rk.ConfigError, match="RAKKA_TEST_KEY is not set"):
        await rk.EnvCredential("RAKKA_TEST_KEY").resolve()

    key_file = tmp_path / "key"
    key_file.write_text("file-secret-1\n")
    cred = rk.FileCredential(key_file)
    assert (await cred.resolve()).get_secret_value() == "file-secret-1"
    key_file.write_text("file-secret-2\n")  # rotation: re-read each time
    assert (await cred.resolve()).get_secret_value() == "file-secret-2"
    with pytest.raises(rk.ConfigError, match="cannot read"):
        await rk.FileCredential(tmp_path / "nope").resolve()

    calls = 0

    async def refresh() -> str:
        nonlocal calls
        calls += 1
        await trio.lowlevel.checkpoint()
        return f"token-{calls}-abcdef"

    fetched = rk.CallableCredential(refresh)
    assert (await fetched.resolve()).get_secret_value() == "token-1-abcdef"
    assert (await fetched.resolve()).get_secret_value() == "token-2-abcdef"


def test_huge_integers_are_config_errors(tmp_path: Path) -> None:
    # TOML integers have no size limit: float() of one overflowed and leaked OverflowError.
    with pytest.raises(rk.ConfigError, match="requests_per_minute: must be at most"):
        rk.RateLimits(requests_per_minute=10**400)
    data = {
        "endpoints": [
            {
                "name": "a",
                "provider": "openai",
                "base_url": "http://x",
                "breaker": {"open_duration": 10**400, "failure_threshold": -(10**30)},
                "limits": {"max_concurrent": 2**53 + 1, "max_wait": 10**20},
            }
        ]
    }
    with pytest.raises(rk.ConfigError) as info:
        rk.load_config(data)
    assert set(dict(info.value.errors)) == {
        "$.endpoints[0].breaker.open_duration",
        "$.endpoints[0].breaker.failure_threshold",
        "$.endpoints[0].limits.max_concurrent",
        "$.endpoints[0].limits.max_wait",
    }
    text = str(info.value)
    assert "an integer of about 401 digits" in text  # not 401 digits printed
    path = tmp_path / "huge.toml"
    path.write_text(
        '[[endpoints]]\nname = "a"\nprovider = "openai"\nbase_url = "http://x"\n'
        f"[endpoints.limits]\nrequests_per_minute = {10**400}\n"
    )
    with pytest.raises(rk.ConfigError, match="requests_per_minute: must be at most"):
        rk.load_config(path)
    path.write_text(f"event_buffer = {'9' * 5000}\n")  # more digits than Python will read
    with pytest.raises(rk.ConfigError, match="refuses to read"):
        rk.load_config(path)


def test_the_readme_example_reports_all_three_mistakes() -> None:
    # An unknown deployment endpoint was dropped whenever other fields had problems.
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (shown,) = re.findall(r"```\n(invalid configuration \(3 problems\):\n.*?)```", readme, re.S)
    data = {
        "endpoints": [
            {
                "name": "openai-primary",
                "provider": "openai",
                "base_url": "https://api.openai.com/v1",
                "breaker": {"failure_treshold": 10, "open_duration": -1.0},
            }
        ],
        "deployments": [{"name": "chat", "endpoints": ["openai-primary", "ghost"]}],
    }
    with pytest.raises(rk.ConfigError) as info:
        rk.load_config(data)
    assert str(info.value) == shown.strip()


def test_new_limiter_options_are_validated() -> None:
    limits = rk.RateLimits()
    assert (limits.max_wait, limits.expected_nodes, limits.key_idle_timeout) == (30.0, 1, 600.0)
    assert rk.RateLimits(max_wait=None, key_idle_timeout=None, max_pause=0).max_pause == 0
    for bad in ({"max_wait": -1}, {"expected_nodes": 0}, {"key_idle_timeout": 0}):
        with pytest.raises(rk.ConfigError):
            rk.RateLimits(**bad)  # type: ignore[arg-type]
