"""Smoke test of examples/fallback_chain.py: a 503 storm on the primary fails no request."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.trio

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fallback_chain.py"


async def test_fallback_chain_example(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("example_fallback_chain", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    with trio.fail_after(30):  # real sockets, real clock: about 3 s of traffic
        report = await module.main()
    assert report["failed"] == []
    served = report["served"]
    assert served.get("backup", 0) > 0  # the storm was ridden out by the backup
    assert served.get("primary", 0) > 0
    assert report["after_storm"].get("primary", 0) > 0  # traffic came back after recovery
    assert report["trips"] >= 1
    # The storm is visible: the primary's 503s are counted as 5xx attempts, although every
    # user request was served.
    assert report["attempts"]["primary"].get("5xx", 0) >= 3
    assert report["attempts"]["backup"].get("5xx", 0) == 0
    out = capsys.readouterr().out
    assert " 0 failed" in out
    assert "half_open -> closed (probe_succeeded)" in out
    assert 'rakka_attempts_total{endpoint="primary",outcome="5xx"}' in out
