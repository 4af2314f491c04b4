"""Price table, default prices, usage cost and price/budget configuration (no I/O)."""

from __future__ import annotations

import pytest

import rakka_trio as rk


def test_default_prices_cover_the_common_models() -> None:
    table = rk.PriceTable()
    for model in (
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "o3-mini",
        "claude-sonnet-4-5",
        "claude-3-5-haiku",
        "gemini-2.5-pro",
        "gemini-2.0-flash",
    ):
        assert table.price(model) is rk.DEFAULT_PRICES[model]
    assert all(p.input > 0 and p.output >= p.input for p in rk.DEFAULT_PRICES.values())


def test_model_names_match_exactly_then_by_longest_prefix() -> None:
    table = rk.PriceTable()
    d = rk.DEFAULT_PRICES
    assert table.price("gpt-4o-2024-08-06") is d["gpt-4o"]
    assert table.price("gpt-4o-mini-2024-07-18") is d["gpt-4o-mini"]
    assert table.price("claude-3-5-sonnet-20241022") is d["claude-3-5-sonnet"]
    assert table.price("claude-sonnet-4-5-20250929") is d["claude-sonnet-4-5"]
    assert table.price("models/gemini-2.0-flash-001") is d["gemini-2.0-flash"]
    assert table.price("openai/GPT-4o") is d["gpt-4o"]
    assert table.price("gpt-4ox") is None  # a prefix must end at a separator
    assert table.price("my-local-llama") is None
    assert table.price(None) is None


def test_overrides_take_precedence_in_layer_order() -> None:
    mine = rk.ModelPrice(input=1.0, output=2.0)
    fleet = rk.ModelPrice(input=5.0, output=6.0)
    table = rk.PriceTable({"gpt-4o": mine}, {"gpt-4o": fleet, "llama-3": fleet})
    assert table.price("gpt-4o") is mine
    assert table.price("gpt-4o-2024-08-06") is mine  # the override's dated versions too
    assert table.price("gpt-4o-mini") is rk.DEFAULT_PRICES["gpt-4o-mini"]  # exact beats prefix
    assert table.price("llama-3-70b") is fleet


def test_usage_cost_prices_cached_and_written_tokens_apart() -> None:
    price = rk.ModelPrice(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    usage = rk.Usage(
        input_tokens=1_000_000,
        output_tokens=100_000,
        cached_tokens=400_000,
        cache_creation_tokens=100_000,
    )
    # 500k fresh at $3, 400k cached at $0.30, 100k written at $3.75, 100k out at $15.
    assert rk.usage_cost(price, usage) == pytest.approx(1.5 + 0.12 + 0.375 + 1.5)
    plain = rk.ModelPrice(input=2.0, output=8.0)  # cached defaults to the input price
    assert rk.usage_cost(plain, usage) == pytest.approx(2.0 + 0.8)


def test_price_config_from_plain_data() -> None:
    cfg = rk.SupervisorConfig.from_dict(
        {
            "prices": {"gpt-4o": {"input": 2, "output": 8, "cached_input": 1}},
            "endpoints": [
                {
                    "name": "a",
                    "provider": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "prices": {"local-model": {"input": 0, "output": 0}},
                    "budget": {"hourly": 5, "on_exceeded": "throttle"},
                }
            ],
        }
    )
    assert cfg.prices["gpt-4o"] == rk.ModelPrice(input=2.0, output=8.0, cached_input=1.0)
    assert cfg.endpoints[0].budget == rk.BudgetConfig(hourly=5.0, on_exceeded="throttle")
    assert rk.SupervisorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(rk.ConfigError) as info:
        rk.SupervisorConfig.from_dict(
            {
                "prices": {"x": {"input": -1, "output": 1}, "y": {"input": 1}, "z": 3},
                "endpoints": [
                    {
                        "name": "a",
                        "provider": "openai",
                        "base_url": "http://127.0.0.1:9/v1",
                        "budget": {"daily": 0, "on_exceeded": "explode"},
                    }
                ],
            }
        )
    paths = {path for path, _ in info.value.errors}
    assert paths == {
        "$.prices.x.input",
        "$.prices.y.output",
        "$.prices.z",
        "$.endpoints[0].budget.daily",
        "$.endpoints[0].budget.on_exceeded",
    }
