"""The console's incident view, computed from the :class:`~._model.Model`: the table's
traffic cells (error rate, request rate, sparkline, limiter), the per-cause breakdown of the
selected endpoint, the deployments panel and the warning before forcing open the last
endpoint of a deployment.

Pure functions: pieces are ``(text, style)`` pairs with Rich style names; every string that
came from the network goes through :func:`~._text.safe_text`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, TypeAlias

from rakka_trio._control import _protocol as proto
from rakka_trio._control._incident_text import attempt_rates, fallback_text, rate, sparkline

from ._model import Model
from ._text import MISSING, format_duration, format_latency, format_percent, safe_text

__all__ = [
    "TREND_BUCKETS",
    "Piece",
    "breakdown_lines",
    "deployment_lines",
    "error_piece",
    "last_serving_warning",
    "limit_piece",
    "rate_piece",
    "trend_piece",
]

Piece: TypeAlias = tuple[str, str]
"""A piece of text and the Rich style to show it in."""

TREND_BUCKETS: Final = 8
"""Buckets in the table's sparkline (80 s with the default 10 s buckets)."""
DETAIL_BUCKETS: Final = 12
"""Buckets in the panel's sparklines (2 minutes with the default 10 s buckets)."""
_LIMIT_TITLES: Final = {
    "rpm": "RPM",
    "tpm": "TPM",
    "input_tpm": "ITPM",
    "output_tpm": "OTPM",
    "concurrency": "CONC",
}
_SEP: Final = " · "


def _error_style(share: float | None) -> str:
    if share is None:
        return ""
    return "bold red" if share >= 0.5 else "red" if share >= 0.1 else "yellow" if share > 0 else ""


def error_piece(ep: proto.EndpointState) -> Piece:
    """``ERR%``: the share of recent requests that failed."""
    if ep.recent is None:
        return MISSING, ""
    return format_percent(ep.recent.error_rate), _error_style(ep.recent.error_rate)


def rate_piece(ep: proto.EndpointState) -> Piece:
    """``REQ/S``: recent requests per second."""
    if ep.recent is None:
        return MISSING, ""
    return rate(sum(ep.recent.requests.values())), ""


def _recent_errors(requests: Sequence[int], errors: Sequence[int]) -> float | None:
    # The last two buckets: the one in progress may have just started.
    total = sum(requests[-2:])
    return sum(errors[-2:]) / total if total else None


def trend_piece(ep: proto.EndpointState) -> Piece:
    """``TREND``: requests per bucket, coloured by the latest buckets' error share."""
    recent = ep.recent
    if recent is None or not recent.requests_series:
        return MISSING, ""
    style = _error_style(_recent_errors(recent.requests_series, recent.errors_series))
    return sparkline(recent.requests_series, TREND_BUCKETS), style or "green"


def limit_piece(ep: proto.EndpointState) -> Piece:
    """``LIMIT``: the busiest limit by name (``↓``: lowered by the provider's headers) or
    the time left of a 429 pause; the bare utilisation from an older server."""
    limiter = ep.limiter
    if limiter is None:
        value = ep.limiter_utilization
        if value is None:
            return MISSING, ""
        return format_percent(value), "red" if value >= 0.95 else "yellow" if value >= 0.8 else ""
    if limiter.paused_for is not None:
        return f"paused {format_duration(limiter.paused_for)}", "bold yellow"
    if not limiter.limits:
        return MISSING, ""
    busiest = max(limiter.limits, key=lambda lim: lim.used)
    text = f"{_LIMIT_TITLES.get(busiest.name, safe_text(busiest.name))} "
    text += format_percent(busiest.used)
    if busiest.limit < busiest.configured:
        text += "↓"
    style = "red" if busiest.used >= 0.95 else "yellow" if busiest.used >= 0.8 else ""
    return text, style


def _limits_text(limiter: proto.LimiterState) -> str:
    parts = []
    for lim in limiter.limits:
        title = _LIMIT_TITLES.get(lim.name, safe_text(lim.name))
        unit = "" if lim.name == "concurrency" else "/min"
        text = f"{title} {format_percent(lim.used)} of {lim.limit}{unit}"
        if lim.limit < lim.configured:
            text += f" (provider-lowered from {lim.configured})"
        parts.append(text)
    if limiter.waiting:
        parts.append(f"{limiter.waiting} waiting")
    return _SEP.join(parts) or MISSING


def breakdown_lines(model: Model, name: str | None) -> list[list[Piece]]:
    """The selected endpoint's incident figures: rates and a sparkline, attempts per second
    by cause, retries, latency, then its limits (nothing when it reports none)."""
    view = model.endpoint(name) if name is not None else None
    if view is None:
        return []
    ep = view.state
    recent, limiter = ep.recent, ep.limiter
    if recent is None and limiter is None:
        return []
    lines: list[list[Piece]] = []
    head: list[Piece] = [(safe_text(ep.name), "bold")]
    if recent is not None:
        head += [
            (f"  {rate(sum(recent.requests.values()))} req/s", ""),
            (f"  errors {format_percent(recent.error_rate)}", _error_style(recent.error_rate)),
            (f"  trips {ep.trips}  ", ""),
            (sparkline(recent.requests_series, DETAIL_BUCKETS), trend_piece(ep)[1]),
        ]
        if recent.window:
            head.append((f"  rates over the last {recent.window:g}s", "dim"))
        lines.append(head)
        lines.append(
            [
                ("  attempts/s ", "dim"),
                (safe_text(attempt_rates(recent.attempts)), ""),
                ("  retries/s ", "dim"),
                (rate(recent.retries), "yellow" if recent.retries else ""),
                ("  p50/p95/p99 ", "dim"),
                ("/".join(format_latency(v) for v in (recent.p50, recent.p95, recent.p99)), ""),
            ]
        )
    else:
        lines.append(head)
    if limiter is not None:
        limits: list[Piece] = [("  limits ", "dim"), (_limits_text(limiter), "")]
        if limiter.paused_for is not None:
            limits.append((f"  paused {format_duration(limiter.paused_for)} (429)", "bold yellow"))
        lines.append(limits)
    return lines


def deployment_lines(model: Model) -> list[list[Piece]]:
    """One line per deployment: endpoints that can serve, success rate, request rate, a
    sparkline and the busiest fallbacks (nothing when the server reports none)."""
    lines: list[list[Piece]] = []
    for dep in model.deployments:
        serving = dep.serving
        total = len(dep.endpoints)
        serving_style = "bold red" if serving == 0 else "yellow" if serving != total else "green"
        failing = None if dep.success_rate is None else 1.0 - dep.success_rate
        line: list[Piece] = [
            ("deployment ", "dim"),
            (safe_text(dep.name), "bold"),
            (f"  serving {MISSING if serving is None else serving}/{total}", serving_style),
            (f"  success {format_percent(dep.success_rate)}", _error_style(failing)),
            (f"  {rate(sum(dep.requests.values()))} req/s  ", ""),
        ]
        if dep.requests_series:
            line.append((sparkline(dep.requests_series, DETAIL_BUCKETS), "green"))
        lines.append(line)
        moving = [f for f in dep.fallbacks if f.per_second > 0] or dep.fallbacks[:1]
        if moving:
            text = _SEP.join(safe_text(fallback_text(f)) for f in moving[:2])
            lines.append([("  fallbacks ", "dim"), (text.replace("->", "→"), "magenta")])
    return lines


def last_serving_warning(model: Model, name: str) -> tuple[str, str] | None:
    """``(title, text)`` of the warning before forcing ``name`` open when nothing would be
    left to serve: the last serving endpoint of a deployment that can still serve (or, from
    a server that reports no deployments, of the whole server); ``None`` otherwise."""
    shown = safe_text(name)
    orphaned = model.deployments_left_without(name)
    if orphaned:
        names = ", ".join(safe_text(d) for d in orphaned)
        plural = "s" if len(orphaned) > 1 else ""
        return (
            f"Warning: {shown} is the last endpoint serving deployment{plural} {names}",
            f"The other endpoints of {names} are open or forced open. Forcing {shown} "
            f"open leaves {names} nothing to serve or fail over to: every request to it "
            "will fail. Continue?",
        )
    if not model.deployments and model.is_last_serving(name):
        return (
            f"Warning: {shown} is the last endpoint serving",
            f"Every other endpoint is open or forced open. Forcing {shown} open leaves "
            "nothing to serve or fail over to: every request will fail. Continue?",
        )
    return None
