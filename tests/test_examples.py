"""Every example runs to completion (under virtual time) and does what its docstring says."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio
import trio.testing

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
