"""Two processes share one API key's rate limit through Redis and together stay under it.

Run: ``uv run python examples/shared_rate_limit.py redis://127.0.0.1:6379/0``

The script starts two copies of itself, two nodes of a fleet. Each opens a supervisor whose
endpoint limits the key to 600 requests per minute (10 per second, burst 20) in
``approximate`` mode, and offers 10 requests per second for a few seconds — together twice
the limit. Admission stays local (``try_acquire`` never awaits Redis); the nodes lease their
budget from Redis in the background. The parent prints what each node admitted and the total
against the limit, and exits non-zero if the fleet ever went over it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import trio

import rakka_trio as rk

PER_MINUTE = 600
BURST = 20


def config(redis_url: str, node: str, family: str) -> rk.SupervisorConfig:
    """One node's configuration: the same key (provider, credential, model) on every node."""
    return rk.SupervisorConfig(
        redis_url=redis_url,
        node_id=node,
        endpoints=[
            rk.EndpointConfig(
                name="openai",
                provider="openai",
                base_url="https://api.openai.com/v1",
                credential=rk.StaticCredential("sk-example-shared-key-not-real"),
                model=family,
                limits=rk.RateLimits(
                    requests_per_minute=PER_MINUTE, requests_burst=BURST, mode="approximate"
                ),
            )
        ],
    )


async def node(redis_url: str, name: str, family: str, start: float, seconds: float) -> None:
    """Offer 10 requests per second from ``start`` (Unix time) for ``seconds``."""
    async with rk.open_supervisor(config(redis_url, name, family)) as sup:
        limiter = sup.limiter("openai")
        await trio.sleep(max(0.0, start - time.time()))
        began, admitted, offered = time.time(), 0, 0
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            offered += 1
            if limiter.try_acquire() == 0.0:
                admitted += 1
            await trio.sleep(0.1)
        print(json.dumps({"node": name, "admitted": admitted, "offered": offered,
                          "began": began, "ended": time.time()}))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("redis_url")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--node", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node:  # a child: one node of the fleet
        trio.run(node, args.redis_url, args.node, args.family, args.start, args.seconds)
        return 0
    family = f"example-{time.time_ns()}"  # a fresh key for this run
    start = time.time() + 3.0  # time for both children to start up
    common = [sys.executable, __file__, args.redis_url, "--seconds", str(args.seconds)]
    children = [
        subprocess.Popen(
            [*common, "--node", name, "--family", family, "--start", repr(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("node-a", "node-b")
    ]
    results = []
    for child in children:
        out, _ = child.communicate(timeout=60)
        if child.returncode:
            print(f"a node failed (exit {child.returncode})", file=sys.stderr)
            return 1
        results.append(json.loads(out.strip().splitlines()[-1]))
    window = max(r["ended"] for r in results) - min(r["began"] for r in results)
    limit = BURST + PER_MINUTE / 60 * window
    total = sum(r["admitted"] for r in results)
    for r in results:
        print(f"{r['node']}: admitted {r['admitted']} of {r['offered']} offered")
    print(f"together: {total} admitted; the shared limit allowed {limit:.0f} in {window:.1f}s")
    return 0 if total <= limit else 1


if __name__ == "__main__":
    sys.exit(main())
