"""The README's configuration and code samples stay true to the code."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import rakka_trio as rk

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_toml_sample_loads() -> None:
    (sample,) = blocks("toml")
    cfg = rk.load_config(tomllib.loads(sample))
    assert [ep.name for ep in cfg.endpoints] == ["openai-primary", "anthropic-backup"]
    primary = cfg.endpoints[0]
    assert primary.breaker.failure_threshold == 10
    assert primary.limits.mode == "local"
    assert cfg.deployments[0].endpoints == ["openai-primary", "anthropic-backup"]


def test_python_samples_parse_and_use_public_names() -> None:
    samples = blocks("python")
    assert samples
    for sample in samples:
        tree = ast.parse(sample)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "rk"
            ):
                assert hasattr(rk, node.attr), f"README uses rk.{node.attr}, which is not public"


def test_the_two_commands_are_documented() -> None:
    assert "uv run rakka-trio demo" in README
    assert "uv run pytest" in README
