"""``rakka-trio demo --redis URL --fleet NAME``: the demo as one node of a fleet.

Start two demos on one Redis with the same ``--fleet`` and force an endpoint open from any
console with ``--fleet`` (``rakka-trio force-open URL primary --fleet --duration 30s``, or the
TUI in fleet mode): both demos apply it within a second and fail over to ``backup``. Each
prints the fleet override when it lands and, in its report, how many requests failed over
while it held.

Kept apart from :mod:`._demo` so the demo's timeline and report stay readable.
"""

from __future__ import annotations

import trio
from rich.console import Console
from rich.text import Text

from ._events import BreakerState, Transition
from ._supervisor import Supervisor

__all__ = ["FleetDemo"]

_HELD = (BreakerState.FORCED_OPEN, BreakerState.DISABLED)


class _Episode:
    """One fleet override on one endpoint of this node, while it held."""

    def __init__(self, endpoint: str, state: str, actor: str, reason: str | None, t: float):
        self.endpoint = endpoint
        self.state = state
        self.actor = actor
        self.reason = reason
        self.started = t
        self.ended: float | None = None
        self.failed_over = 0  # requests that moved from this endpoint to the next meanwhile


class FleetDemo:
    """Watches this node's breakers for fleet overrides and counts the failovers they cause
    (from the ``chat`` deployment's fallbacks away from the endpoint while it was held)."""

    def __init__(self, sup: Supervisor, name: str, deployment: str = "chat") -> None:
        self._sup = sup
        self.name = name
        self._deployment = deployment
        self.episodes: list[_Episode] = []
        self._open: dict[str, tuple[_Episode, int]] = {}  # endpoint -> episode, fallbacks then

    @property
    def failed_over(self) -> int:
        """Requests that failed over while a fleet override held an endpoint (so far)."""
        now = sum(e.failed_over for e in self.episodes)
        return now + sum(self._fallbacks(ep) - base for ep, (_, base) in self._open.items())

    def print_intro(self, console: Console, control_url: str, token: str) -> None:
        """Say how to command the whole fleet from another terminal."""
        console.print(
            f"  fleet [bold]{self.name}[/]: this demo is node [bold]{self._sup.node_id}[/]; "
            "start another `rakka-trio demo` with the same --redis and --fleet, then force "
            "an endpoint open on every node at once (one line, copy and paste):"
        )
        console.print(
            f"RAKKA_TOKEN={token} rakka-trio force-open {control_url} primary --fleet "
            "--duration 30s --reason drill",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )

    def _fallbacks(self, endpoint: str) -> int:
        stats = self._sup.statistics().deployments.get(self._deployment)
        if stats is None:
            return 0
        prefix = f"{endpoint}:"
        return sum(n for key, n in stats.fallbacks.items() if key.startswith(prefix))

    async def watch(
        self,
        console: Console,
        t0: float,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Note each fleet override as it lands here and ends (until cancelled)."""
        async with self._sup.subscribe(stats=False) as events:
            task_status.started()
            async for event in events:
                if isinstance(event, Transition):
                    self._transition(event, console, event.at - t0)

    def _transition(self, event: Transition, console: Console, t: float) -> None:
        held = self._open.pop(event.endpoint, None)
        if held is not None:
            episode, base = held
            episode.ended = t
            episode.failed_over = self._fallbacks(event.endpoint) - base
        actor = event.actor or ""
        if event.to_state in _HELD and actor.startswith("fleet:"):
            episode = _Episode(event.endpoint, event.to_state.value, actor, event.reason, t)
            self.episodes.append(episode)
            self._open[event.endpoint] = (episode, self._fallbacks(event.endpoint))
            console.print(
                f"[dim]{t:6.2f}s[/] [bold magenta]fleet {self.name}[/]: {event.endpoint} "
                f"{event.to_state.value} on every node by {actor.removeprefix('fleet:')}"
                f" ({event.reason or 'no reason'}); requests fail over"
            )

    def summary(self, elapsed: float) -> Text:
        """What the fleet's overrides did on this node, for the report."""
        if not self.episodes:
            return Text(f"fleet {self.name}: no fleet override reached this node")
        lines = []
        for episode in self.episodes:
            failed_over = episode.failed_over
            if episode.ended is None:
                failed_over = self._fallbacks(episode.endpoint) - self._open[episode.endpoint][1]
            until = f"{episode.ended:.1f}s" if episode.ended is not None else "the end"
            lines.append(
                f"fleet {self.name}: {episode.endpoint} {episode.state} by "
                f"{episode.actor.removeprefix('fleet:')} from {episode.started:.1f}s to {until}"
                f" of {elapsed:g}s: {failed_over} requests failed over meanwhile"
            )
        return Text("\n".join(lines), style="bold magenta")
