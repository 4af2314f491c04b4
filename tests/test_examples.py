"""Every example runs to completion (under virtual time) and does what its docstring says."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio
import trio.testing

import rakka_trio as rk

pytestmark = pytest.mark.trio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_breaker_basics(
    mock_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = await load("breaker_basics").main()
    assert seen[:4] == ["503", "503", "503", "fail-fast"]
    assert seen[-5:] == ["ok"] * 5
    out = capsys.readouterr().out
    assert "closed -> open (failure_threshold)" in out
    assert "half_open -> closed (probe_succeeded)" in out


async def test_stream_from_mock_provider(capsys: pytest.CaptureFixture[str]) -> None:
    # Real sockets: the real clock, bounded.
    with trio.fail_after(20):
        answers = await load("stream_from_mock_provider").main()
    expected = "Structured concurrency keeps every call accounted for."
    assert answers == {"openai": expected, "anthropic": expected, "retried": expected}
    out = capsys.readouterr().out
    assert "answered in 3 attempts" in out
    assert "2 failures recorded" in out


async def test_real_providers_example_skips_without_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    module = load("real_providers")
    assert module.configured_endpoints() == []
    await module.main()
    assert "Set OPENAI_API_KEY" in capsys.readouterr().out
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used-000000")
    (only,) = module.configured_endpoints()
    assert only.name == "openai" and only.credential == rk.EnvCredential("OPENAI_API_KEY")


async def test_incident_drill(capsys: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(60):
        phases = await load("incident_drill").main()
    assert phases["before"]["primary"] > 0 and phases["before"]["backup"] == 0
    assert phases["forced open"]["primary"] == 0 and phases["forced open"]["backup"] > 0
    assert phases["after reset"]["primary"] > 0
    out = capsys.readouterr().out
    assert "primary: forced_open for 30s (reason: drill)" in out
    assert "primary: closed" in out
