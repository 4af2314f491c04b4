"""``rakka-trio tui``: arguments, token sources, URL checks, lazy imports and packaging."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import rakka_trio_tui
from rakka_trio._cli import main
from rakka_trio_tui import _app

TOKEN = "operator-token-7f3a9c2e51"


class FakeApp:
    """Stands in for RakkaTui: records how it was built and "runs" at once."""

    made: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, url: str, **kw: Any) -> None:
        FakeApp.made.append((url, kw))
        self.return_code: int | None = None

    def run(self) -> None:
        self.return_code = 0


@pytest.fixture
def fake_app(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    FakeApp.made = []
    monkeypatch.setattr(_app, "RakkaTui", FakeApp)
    monkeypatch.delenv("RAKKA_TOKEN", raising=False)
    return FakeApp.made


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["tui", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "URL" in out and "--token" in out and "RAKKA_TOKEN" in out and "--cafile" in out


def test_token_from_the_environment(
    fake_app: list[tuple[str, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAKKA_TOKEN", TOKEN)
    assert main(["tui", "ws://127.0.0.1:8765"]) == 0
    ((url, kw),) = fake_app
    assert url == "ws://127.0.0.1:8765"
    assert kw["token"] == TOKEN and kw["client_name"] == "tui" and kw["ssl_context"] is None


def test_token_option_and_file(
    fake_app: list[tuple[str, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAKKA_TOKEN", "from-the-environment")
    assert main(["tui", "ws://h:1", "--token", TOKEN, "--client", "ops"]) == 0
    secret = tmp_path / "token"
    secret.write_text(f"{TOKEN}-file\n")
    assert main(["tui", "ws://h:1", "--token-file", str(secret)]) == 0
    monkeypatch.delenv("RAKKA_TOKEN")
    assert main(["tui", "ws://h:1"]) == 0
    assert [(kw["token"], kw["client_name"]) for _, kw in fake_app] == [
        (TOKEN, "ops"),
        (f"{TOKEN}-file", "tui"),
        (None, "tui"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["http://127.0.0.1:8765"], "must be ws://host:port or wss://host:port"),
        (["ws://"], "must be ws://host:port"),
        ([f"ws://h:99999999/?token={TOKEN}"], "not a valid ws://host:port URL"),
        (["ws://h:1", "--token-file", "/nonexistent/token"], "cannot read a file"),
        (["ws://h:1", "--client", "bad\x1bname"], "--client"),
    ],
)
def test_usage_errors(
    fake_app: list[tuple[str, dict[str, Any]]],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    assert main(["tui", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and TOKEN not in err
    assert fake_app == []


def test_registering_the_subcommand_does_not_import_textual() -> None:
    code = (
        "import sys\n"
        "from rakka_trio._cli import build_parser\n"
        "build_parser().parse_args(['demo'])\n"
        "import rakka_trio_tui\n"
        "assert 'textual' not in sys.modules, 'textual was imported'\n"
        "rakka_trio_tui.RakkaTui\n"
        "assert 'textual' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_installed_as_a_namespaced_package() -> None:
    path = Path(rakka_trio_tui.__file__).resolve()
    assert path.parent.name == "rakka_trio_tui" and path.parent.parent.name == "tui"
    assert not (path.parent.parent / "__init__.py").exists()  # tui/ itself is no package
    for name in rakka_trio_tui.__all__:  # every lazily exported name resolves
        assert getattr(rakka_trio_tui, name) is not None
    with pytest.raises(AttributeError):
        _ = rakka_trio_tui.no_such_name
