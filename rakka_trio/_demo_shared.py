"""``rakka-trio demo --redis``: checking the Redis URL, and showing the budget the demo
processes share (how many nodes, how much of each budget this one gets).

Kept apart from :mod:`._demo` so the demo's timeline and report stay readable.
"""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Mapping

import attrs
import trio
from rich.console import Console
from rich.text import Text

from ._limits import KeyStatistics
from ._supervisor import Supervisor

__all__ = ["SharedBudgets", "check_redis_url", "redis_problem", "shown_redis_url"]

_PROBE_TIMEOUT = 3.0  # seconds to reach Redis before the demo refuses to start


def check_redis_url(url: str) -> str | None:
    """What is wrong with ``url`` as a Redis URL, or ``None``. Never quotes the URL (it may
    hold a password)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "not a valid URL (e.g. redis://127.0.0.1:6379/0)"
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return "must be redis://HOST[:PORT][/DB] or rediss://… (e.g. redis://127.0.0.1:6379/0)"
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        return "the database after the host must be a number (e.g. /0)"
    return None


def shown_redis_url(url: str) -> str:
    """``url`` without its user part (a password may sit there): scheme, host, port, db."""
    try:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
    except ValueError:
        return "<the --redis URL>"


def _leaf(exc: BaseException) -> BaseException:
    # coredis runs on anyio: a failure arrives wrapped in an exception group.
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def redis_problem(url: str, within: float = _PROBE_TIMEOUT) -> str | None:
    """Why Redis at ``url`` cannot be used (one line, no credentials), or ``None`` when it
    answers PING within ``within`` seconds."""
    import coredis
    from coredis.retry import NoRetryPolicy

    from ._redact import redact

    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        url, connect_timeout=within, stream_timeout=within, retry_policy=NoRetryPolicy()
    )
    try:
        with trio.fail_after(within * 2):
            async with client:
                await client.ping()
    except trio.TooSlowError:
        return f"no answer within {within * 2:g}s"
    except Exception as exc:  # any failure to reach it is the answer, not a crash
        leaf = _leaf(exc)
        text = redact(str(leaf)).replace(url, "<url>") or type(leaf).__name__
        return f"{type(leaf).__name__}: {text}"
    return None


@attrs.frozen(kw_only=True)
class _Use:
    nodes: int
    admitted: int
    fallback: bool


class SharedBudgets:
    """Watches the demo's shared limit keys: prints a line whenever the number of nodes
    sharing them changes or Redis falls back, and says at the end how much this node got.

    ``budgets`` maps an endpoint to ``(requests_per_minute, burst)``.
    """

    def __init__(self, sup: Supervisor, budgets: Mapping[str, tuple[int, int | None]]) -> None:
        self._sup = sup
        self._budgets = dict(budgets)
        self._nodes_seen = 1
        self._fallback = False
        self.most_nodes = 1

    def _use(self, endpoint: str) -> _Use | None:
        keys: tuple[KeyStatistics, ...] = self._sup.limiter(endpoint).statistics().keys
        if not keys:
            return None
        return _Use(
            nodes=max((k.members or 1) for k in keys),
            admitted=sum(k.admitted for k in keys),
            fallback=any(k.fallback for k in keys),
        )

    def nodes(self) -> int:
        """How many nodes share the budgets now (the most over the endpoints)."""
        uses = [u for u in map(self._use, self._budgets) if u is not None]
        return max((u.nodes for u in uses), default=1)

    def describe(self) -> str:
        """``primary 3,000/min, backup 1,500/min``."""
        return ", ".join(f"{name} {rpm:,}/min" for name, (rpm, _) in self._budgets.items())

    async def watch(self, console: Console, t0: float) -> None:
        """Print changes in the number of nodes sharing the budgets, and Redis fallbacks."""
        while True:
            uses = [u for u in map(self._use, self._budgets) if u is not None]
            nodes = max((u.nodes for u in uses), default=1)
            fallback = any(u.fallback for u in uses)
            stamp = f"[dim]{trio.current_time() - t0:6.2f}s[/]"
            if nodes != self._nodes_seen:
                self._nodes_seen = nodes
                self.most_nodes = max(self.most_nodes, nodes)
                console.print(
                    f"{stamp} redis: nodes sharing the budgets now [bold]{nodes}[/] "
                    f"({self.describe()})"
                )
            if fallback != self._fallback:
                self._fallback = fallback
                console.print(
                    f"{stamp} [bold red]redis unreachable[/]: each node admits within its "
                    "own share of the budgets until it is back"
                    if fallback
                    else f"{stamp} redis is back: the budgets are shared again"
                )
            await trio.sleep(0.25)

    def summary(self, elapsed: float, *, final: bool = False) -> Text:
        """One line for the live view and the report: what this node got of each budget.

        The live view counts the nodes sharing now; the ``final`` report the most that shared
        during the run (a node that finished first has already left when the other reports).
        """
        parts = []
        for name, (rpm, _) in self._budgets.items():
            use = self._use(name)
            if use is None:
                continue
            here = use.admitted / elapsed * 60 if elapsed > 0 else 0.0
            parts.append(f"{name} {here:,.0f}/min of {rpm:,}")
        nodes = max(self.most_nodes, self.nodes()) if final else self.nodes()
        return Text(
            f"shared budgets (redis, {nodes} node{'s' if nodes != 1 else ''}): this node got "
            + ", ".join(parts)
        )


def say(message: str) -> None:
    """One ``rakka-trio demo: …`` line on stderr."""
    print(f"rakka-trio demo: {message}", file=sys.stderr, flush=True)
