"""What calls cost: a per-model price table, rolling spend per endpoint, and budgets.

Prices are USD per million tokens (:class:`ModelPrice`). :data:`DEFAULT_PRICES` holds list
prices of common OpenAI, Anthropic and Gemini models as published in 2025 — **defaults only**:
providers change prices, and discounts, batch rates, long-context tiers and regional pricing are
not modelled. Check them and override per endpoint (``EndpointConfig.prices``) or for every
endpoint (``SupervisorConfig.prices``).

Each endpoint keeps its spend over a rolling hour and a rolling day in fixed buckets (one minute
and fifteen minutes wide), so memory is constant and spend leaves a window at most one bucket
late. A :class:`BudgetConfig` limit reached triggers its ``on_exceeded`` action.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import attrs
import trio

from .._chunks import Usage
from .._config import BudgetConfig, ModelPrice
from .._errors import BudgetExceeded
from .._events import Event

__all__ = [
    "DEFAULT_PRICES",
    "BudgetAlert",
    "BudgetStatistics",
    "CostTracker",
    "PriceTable",
    "RollingSum",
    "usage_cost",
]

log = logging.getLogger("rakka_trio.cost")


def _p(
    input: float, output: float, cached: float | None = None, write: float | None = None
) -> ModelPrice:
    return ModelPrice(input=input, output=output, cached_input=cached, cache_write=write)


_opus = _p(15.0, 75.0, 1.50, 18.75)
_sonnet = _p(3.0, 15.0, 0.30, 3.75)

#: List prices (USD per million tokens: input, output, cached input, cache write) of common
#: models, as published by the providers in 2025. DEFAULTS YOU SHOULD CHECK: prices change and
#: tiers (long context, batch, priority, regions) are not modelled. Override them in config.
#: A model matches its exact name or the longest name it extends with ``-``, ``@``, ``:`` or
#: ``.`` (``gpt-4o-2024-08-06`` is priced as ``gpt-4o``); anything before a ``/`` is ignored
#: (``openai/gpt-4o``, ``models/gemini-2.0-flash``).
DEFAULT_PRICES: Mapping[str, ModelPrice] = MappingProxyType(
    {
        # OpenAI
        "gpt-5": _p(1.25, 10.0, 0.125),
        "gpt-5-mini": _p(0.25, 2.0, 0.025),
        "gpt-5-nano": _p(0.05, 0.40, 0.005),
        "gpt-4.1": _p(2.0, 8.0, 0.50),
        "gpt-4.1-mini": _p(0.40, 1.60, 0.10),
        "gpt-4.1-nano": _p(0.10, 0.40, 0.025),
        "gpt-4o": _p(2.50, 10.0, 1.25),
        "gpt-4o-mini": _p(0.15, 0.60, 0.075),
        "gpt-4-turbo": _p(10.0, 30.0),
        "gpt-4": _p(30.0, 60.0),
        "gpt-3.5-turbo": _p(0.50, 1.50),
        "o1": _p(15.0, 60.0, 7.50),
        "o1-mini": _p(1.10, 4.40, 0.55),
        "o3": _p(2.0, 8.0, 0.50),
        "o3-mini": _p(1.10, 4.40, 0.55),
        "o4-mini": _p(1.10, 4.40, 0.275),
        # Anthropic (cache write: the 5-minute cache)
        "claude-opus-4-5": _p(5.0, 25.0, 0.50, 6.25),
        "claude-opus-4-1": _opus,
        "claude-opus-4": _opus,
        "claude-sonnet-4-5": _sonnet,
        "claude-sonnet-4": _sonnet,
        "claude-haiku-4-5": _p(1.0, 5.0, 0.10, 1.25),
        "claude-3-7-sonnet": _sonnet,
        "claude-3-5-sonnet": _sonnet,
        "claude-3-5-haiku": _p(0.80, 4.0, 0.08, 1.0),
        "claude-3-opus": _opus,
        "claude-3-haiku": _p(0.25, 1.25, 0.03, 0.30),
        # Gemini (prompts up to 200k / 128k tokens)
        "gemini-2.5-pro": _p(1.25, 10.0, 0.125),
        "gemini-2.5-flash": _p(0.30, 2.50, 0.03),
        "gemini-2.5-flash-lite": _p(0.10, 0.40, 0.01),
        "gemini-2.0-flash": _p(0.10, 0.40, 0.025),
        "gemini-2.0-flash-lite": _p(0.075, 0.30),
        "gemini-1.5-pro": _p(1.25, 5.0, 0.3125),
        "gemini-1.5-flash": _p(0.075, 0.30, 0.01875),
    }
)

_SEPARATORS = "-@:."
_CACHE_MAX = 1024  # model names looked up per table (requests choose them: keep it bounded)


def usage_cost(price: ModelPrice, usage: Usage) -> float:
    """The USD cost of ``usage`` at ``price``.

    ``usage.input_tokens`` includes cached and cache-written tokens (see :class:`Usage`); they
    are billed at their own prices and the rest at the input price. Reasoning tokens are part of
    the output.
    """
    inp = max(0, usage.input_tokens)
    cached = min(max(0, usage.cached_tokens), inp)
    written = min(max(0, usage.cache_creation_tokens), inp - cached)
    fresh = inp - cached - written
    cached_price = price.input if price.cached_input is None else price.cached_input
    write_price = price.input if price.cache_write is None else price.cache_write
    return (
        fresh * price.input
        + cached * cached_price
        + written * write_price
        + max(0, usage.output_tokens) * price.output
    ) / 1_000_000


class PriceTable:
    """Prices looked up through ``layers`` (highest precedence first), then the defaults.

    ``price(model)`` is the exact (case-insensitive) name from the first layer that has it;
    otherwise the longest name that ``model`` extends with ``-``, ``@``, ``:`` or ``.``
    (an earlier layer wins a tie). So overriding ``gpt-4o`` also prices
    ``gpt-4o-2024-08-06``, while ``gpt-4o-mini`` keeps its own price.
    """

    def __init__(
        self, *layers: Mapping[str, ModelPrice], defaults: Mapping[str, ModelPrice] | None = None
    ) -> None:
        chain: list[Mapping[str, ModelPrice]] = [
            *layers,
            DEFAULT_PRICES if defaults is None else defaults,
        ]
        self._layers: list[dict[str, ModelPrice]] = [
            {k.lower(): v for k, v in layer.items()} for layer in chain
        ]
        self._cache: dict[str, ModelPrice | None] = {}

    def price(self, model: str | None) -> ModelPrice | None:
        """The price of ``model`` (``None`` when no layer knows it)."""
        if not model:
            return None
        try:
            return self._cache[model]
        except KeyError:
            pass
        name = model.rsplit("/", 1)[-1].lower()
        found: ModelPrice | None = None
        for layer in self._layers:
            found = layer.get(name)
            if found is not None:
                break
        else:
            best = ""
            for layer in self._layers:
                for key, price in layer.items():
                    if (
                        len(key) > len(best)
                        and name.startswith(key)
                        and name[len(key)] in _SEPARATORS
                    ):
                        best, found = key, price
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[model] = found
        return found

    def cost(self, model: str | None, usage: Usage) -> float | None:
        """The USD cost of ``usage`` on ``model``, or ``None`` when the model has no price."""
        price = self.price(model)
        return None if price is None else usage_cost(price, usage)


class RollingSum:
    """A sum over the last ``span`` seconds kept in ``buckets`` equal buckets (O(1) memory).

    An amount leaves the sum when its bucket falls out of the window, so at most one bucket
    width late. Buckets are allocated on the first ``add``.
    """

    __slots__ = ("_buckets", "_head", "_n", "_total", "_width")

    def __init__(self, span: float, buckets: int) -> None:
        self._n = buckets
        self._width = span / buckets
        self._buckets: list[float] | None = None
        self._head = 0  # index (time // width) of the newest bucket
        self._total = 0.0

    def _advance(self, now: float) -> int:
        index = math.floor(now / self._width)
        buckets = self._buckets
        if buckets is not None and index > self._head:
            steps = min(index - self._head, self._n)
            for i in range(1, steps + 1):
                buckets[(self._head + i) % self._n] = 0.0
            # Re-summing (at most n floats, once per bucket width) keeps rounding from drifting.
            self._total = math.fsum(buckets)
            self._head = index
        return index

    def add(self, amount: float, now: float) -> None:
        """Add ``amount`` at time ``now``."""
        if self._buckets is None:
            self._buckets = [0.0] * self._n
            self._head = math.floor(now / self._width)
        index = self._advance(now)
        self._buckets[index % self._n] += amount
        self._total += amount

    def total(self, now: float) -> float:
        """The sum over the window ending at ``now``."""
        if self._buckets is None:
            return 0.0
        self._advance(now)
        return max(0.0, self._total)


@attrs.frozen(kw_only=True)
class BudgetAlert(Event):
    """An endpoint's spend crossed a budget limit (``exceeded``), or fell back below it.

    ``window`` is ``hourly`` or ``daily``; ``spend`` and ``limit`` are USD; ``action`` is the
    budget's ``on_exceeded`` (``reject``, ``warn`` or ``throttle``) now in force or lifted.
    """

    endpoint: str
    window: str
    spend: float
    limit: float
    action: str
    exceeded: bool


@attrs.frozen(kw_only=True)
class BudgetStatistics:
    """Spend of one endpoint: ``total`` since start, over the rolling ``hour`` and ``day``;
    the configured limits; ``exceeded`` names the window over its limit (``None``: within
    budget); ``unpriced`` counts calls whose model had no price (not in the spend)."""

    total: float
    hour: float
    day: float
    hourly_limit: float | None
    daily_limit: float | None
    action: str
    exceeded: str | None
    unpriced: int


_HOUR = (3600.0, 60)  # one-minute buckets
_DAY = (86400.0, 96)  # fifteen-minute buckets


class CostTracker:
    """Spend and budget of one endpoint. Time is :func:`trio.current_time`."""

    __slots__ = (
        "_active",
        "_budget",
        "_day",
        "_endpoint",
        "_hour",
        "_over",
        "_prices",
        "_publish",
        "total",
        "unpriced",
    )

    def __init__(
        self,
        endpoint: str,
        budget: BudgetConfig,
        prices: PriceTable,
        publish: Callable[[Event], None] | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._budget = budget
        self._prices = prices
        self._publish = publish
        self._active = budget.hourly is not None or budget.daily is not None
        self._hour = RollingSum(*_HOUR)
        self._day = RollingSum(*_DAY)
        self._over: str | None = None  # the window last reported over its limit
        self.total = 0.0
        self.unpriced = 0

    @property
    def budget(self) -> BudgetConfig:
        """The budget in force."""
        return self._budget

    def charge(self, model: str | None, usage: Usage | None) -> float | None:
        """Add a call's cost; returns it (``None`` for no usage or an unpriced model)."""
        if usage is None:
            return None
        cost = self._prices.cost(model, usage)
        if cost is None:
            self.unpriced += 1
            return None
        if cost:
            now = trio.current_time()
            self.total += cost
            self._hour.add(cost, now)
            self._day.add(cost, now)
            if self._active:
                self._evaluate(now)
        return cost

    def exceeded(self) -> str | None:
        """``hourly`` or ``daily`` when that window's spend reached its limit, else ``None``.

        Publishes a :class:`BudgetAlert` when the answer changes.
        """
        if not self._active:
            return None
        return self._evaluate(trio.current_time())

    def check(self) -> None:
        """Raise :class:`BudgetExceeded` when a limit is reached and the action is ``reject``."""
        if (
            self._active
            and self._budget.on_exceeded == "reject"
            and self._evaluate(trio.current_time()) is not None
        ):
            raise BudgetExceeded(self._message())

    @property
    def throttled(self) -> bool:
        """True while a limit is reached and the action is ``throttle``."""
        return (
            self._active
            and self._budget.on_exceeded == "throttle"
            and self._evaluate(trio.current_time()) is not None
        )

    def statistics(self) -> BudgetStatistics:
        """A snapshot of spend and budget state."""
        now = trio.current_time()
        return BudgetStatistics(
            total=self.total,
            hour=self._hour.total(now),
            day=self._day.total(now),
            hourly_limit=self._budget.hourly,
            daily_limit=self._budget.daily,
            action=self._budget.on_exceeded,
            exceeded=self._evaluate(now) if self._active else None,
            unpriced=self.unpriced,
        )

    def _windows(self, now: float) -> Sequence[tuple[str, float, float]]:
        out: list[tuple[str, float, float]] = []
        if self._budget.hourly is not None:
            out.append(("hourly", self._hour.total(now), self._budget.hourly))
        if self._budget.daily is not None:
            out.append(("daily", self._day.total(now), self._budget.daily))
        return out

    def _evaluate(self, now: float) -> str | None:
        over: str | None = None
        spend = limit = 0.0
        for window, spent, cap in self._windows(now):
            if spent >= cap:
                over, spend, limit = window, spent, cap
                break
        if over != self._over:
            previous, self._over = self._over, over
            self._alert(now, over, previous, spend, limit)
        return over

    def _alert(
        self, now: float, over: str | None, previous: str | None, spend: float, limit: float
    ) -> None:
        action = self._budget.on_exceeded
        if over is not None:
            log.warning(
                "endpoint %s spent $%.4f of its %s budget $%.4f (%s)",
                self._endpoint,
                spend,
                over,
                limit,
                action,
            )
            window = over
        else:
            assert previous is not None
            window = previous
            for name, spent, cap in self._windows(now):
                if name == previous:
                    spend, limit = spent, cap
            log.info("endpoint %s is back within its %s budget", self._endpoint, previous)
        if self._publish is not None:
            self._publish(
                BudgetAlert(
                    at=now,
                    endpoint=self._endpoint,
                    window=window,
                    spend=spend,
                    limit=limit,
                    action=action,
                    exceeded=over is not None,
                )
            )

    def _message(self) -> str:
        now = trio.current_time()
        for window, spent, cap in self._windows(now):
            if spent >= cap:
                return (
                    f"endpoint {self._endpoint!r} spent ${spent:.4f} of its {window} budget "
                    f"${cap:.4f}"
                )
        return f"endpoint {self._endpoint!r} is over budget"
