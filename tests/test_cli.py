"""The command line: argument validation and exit codes."""

from __future__ import annotations

import pytest

from rakka_trio import _cli


def test_cli_rejects_bad_duration(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _cli.main(["demo", "--duration", "-1"])
    assert info.value.code == 2
    assert "must be > 0" in capsys.readouterr().err
