"""The incident view as text: what ``rakka-trio state`` prints below its table, and the
pieces the console reuses (sparklines, rates, limiter use).

Pure functions of protocol snapshots; every string from the network is shown through
``safe`` (no escape sequences reach the terminal).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Final

from . import _protocol as proto

__all__ = [
    "SPARK_BARS",
    "attempt_rates",
    "bars_for",
    "deployment_lines",
    "fallback_text",
    "limiter_cell",
    "limits_text",
    "rate",
    "recent_lines",
    "sparkline",
]

SPARK_BARS: Final = "▁▂▃▄▅▆▇█"
TREND_BUCKETS: Final = 12  # buckets drawn by `state` (2 minutes with 10 s buckets)
ASCII_BARS: Final = " .:-=+*#"
_LIMIT_TITLES: Final = {
    "rpm": "RPM",
    "tpm": "TPM",
    "input_tpm": "ITPM",
    "output_tpm": "OTPM",
    "concurrency": "CONC",
}
_CAUSE_ORDER: Final = (
    "ok",
    "5xx",
    "429",
    "timeout",
    "network",
    "truncated",
    "filtered",
    "circuit_open",
    "rejected",
    "4xx",
    "cancelled",
    "error",
)


def bars_for(encoding: str | None) -> str:
    """The sparkline characters a terminal with ``encoding`` can print."""
    try:
        SPARK_BARS.encode(encoding or "ascii")
    except (LookupError, UnicodeEncodeError):
        return ASCII_BARS
    return SPARK_BARS


def sparkline(series: Sequence[int], width: int | None = None, *, bars: str = SPARK_BARS) -> str:
    """One character per bucket (the last ``width`` buckets, padded with empty ones on the
    left when the series is shorter), scaled to the largest; an empty bucket is the lowest
    bar, so time keeps its place."""
    values = list(series[-width:] if width else series)
    if width and values and len(values) < width:
        values = [0] * (width - len(values)) + values
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return bars[0] * len(values)
    last = len(bars) - 1
    return "".join(bars[0] if v <= 0 else bars[max(1, round(v / top * last))] for v in values)


def rate(value: float | None) -> str:
    """A rate per second, compact: ``0``, ``0.4``, ``12.3``, ``1234``."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 0.1 else "<0.1"


def _percent(value: float | None) -> str:
    if value is None:
        return "-"
    if 0 < value < 0.01:
        return "<1%"
    return f"{value:.0%}"


def _ordered(rates: dict[str, float]) -> list[tuple[str, float]]:
    def key(item: tuple[str, float]) -> tuple[int, str]:
        label = item[0]
        return (_CAUSE_ORDER.index(label) if label in _CAUSE_ORDER else 99, label)

    return sorted(rates.items(), key=key)


def attempt_rates(rates: dict[str, float]) -> str:
    """``ok 8.0  5xx 4.1`` by outcome, in a fixed order (``-`` when none)."""
    parts = [f"{label} {rate(value)}" for label, value in _ordered(rates)]
    return "  ".join(parts) or "-"


def limits_text(limiter: proto.LimiterState) -> str:
    """Every limit: ``RPM 42% of 60000/min, TPM 98% of 1000/min (provider-lowered from
    60000)``,
    then ``paused 2.0s`` or ``N waiting``."""
    parts = []
    for lim in limiter.limits:
        title = _LIMIT_TITLES.get(lim.name, lim.name)
        unit = "" if lim.name == "concurrency" else "/min"
        text = f"{title} {_percent(lim.used)} of {lim.limit}{unit}"
        if lim.limit < lim.configured:
            text += f" (provider-lowered from {lim.configured})"
        parts.append(text)
    if limiter.paused_for is not None:
        parts.append(f"paused {limiter.paused_for:.1f}s (429)")
    if limiter.waiting:
        parts.append(f"{limiter.waiting} waiting")
    return ", ".join(parts) or "-"


def limiter_cell(ep: proto.EndpointState) -> str:
    """The ``LIMITER`` column: the busiest limit by name (``TPM 98%``, ``lowered`` when the
    provider's headers lowered it), or ``paused 2.0s``; the bare utilisation from an older
    server."""
    limiter = ep.limiter
    if limiter is None:
        value = ep.limiter_utilization
        return "-" if value is None else f"{value:.0%}"
    if limiter.paused_for is not None:
        return f"paused {limiter.paused_for:.1f}s"
    if not limiter.limits:
        return "-"
    busiest = max(limiter.limits, key=lambda lim: lim.used)
    text = f"{_LIMIT_TITLES.get(busiest.name, busiest.name)} {_percent(busiest.used)}"
    return text + " lowered" if busiest.limit < busiest.configured else text


def fallback_text(fallback: proto.FallbackState) -> str:
    """``primary->backup CircuitOpen 12.0/s (340)``."""
    return (
        f"{fallback.from_endpoint}->{fallback.to} {fallback.cause} "
        f"{rate(fallback.per_second)}/s ({fallback.total})"
    )


def _table(rows: list[tuple[str, ...]], safe: Callable[[str], str]) -> list[str]:
    widths = [max(len(safe(row[i])) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(safe(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in rows
    ]


def _window(windows: Iterable[float | None]) -> str:
    known = [w for w in windows if w]
    return f"last {known[0]:g}s" if known else "recent"


def recent_lines(snapshot: proto.Snapshot, safe: Callable[[str], str], bars: str) -> list[str]:
    """The rolling rates of every active endpoint (nothing when none reports any)."""
    active = [ep for ep in snapshot.endpoints if ep.recent is not None]
    if not active:
        return []
    rows: list[tuple[str, ...]] = [
        ("ENDPOINT", "REQ/S", "ERR%", "ATTEMPTS/S BY OUTCOME", "RETRY/S", "LIMITS", "TREND")
    ]
    for ep in active:
        recent = ep.recent
        assert recent is not None
        rows.append(
            (
                ep.name,
                rate(sum(recent.requests.values())),
                _percent(recent.error_rate),
                attempt_rates(recent.attempts),
                rate(recent.retries),
                limits_text(ep.limiter) if ep.limiter is not None else "-",
                sparkline(recent.requests_series, TREND_BUCKETS, bars=bars),
            )
        )
    title = f"{_window(ep.recent.window for ep in active if ep.recent)}, per endpoint:"
    return ["", title, *_table(rows, safe)]


def deployment_lines(snapshot: proto.Snapshot, safe: Callable[[str], str], bars: str) -> list[str]:
    """Every deployment: serving endpoints, request rate, success rate, fallbacks."""
    deployments = snapshot.deployments or []
    if not deployments:
        return []
    rows: list[tuple[str, ...]] = [
        ("DEPLOYMENT", "STRATEGY", "SERVING", "REQ/S", "SUCCESS", "FALLBACKS", "TREND")
    ]
    for dep in deployments:
        serving = "-" if dep.serving is None else f"{dep.serving}/{len(dep.endpoints)}"
        moves = ", ".join(fallback_text(f) for f in dep.fallbacks[:3]) or "-"
        rows.append(
            (
                dep.name,
                dep.strategy,
                serving,
                rate(sum(dep.requests.values())),
                _percent(dep.success_rate),
                moves,
                sparkline(dep.requests_series, TREND_BUCKETS, bars=bars),
            )
        )
    title = f"{_window(d.window for d in deployments)}, per deployment:"
    return ["", title, *_table(rows, safe)]
