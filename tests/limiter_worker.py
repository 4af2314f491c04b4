"""One node of the multi-process limiter test and benchmark (P7, P9).

Run as ``python tests/limiter_worker.py --url redis://... --node NAME --family F ...``: it opens
a supervisor whose one endpoint shares a key through Redis (approximate mode by default), prints
``ready``, reads the common start time (Unix time) from stdin and waits for it, offers
``--offered`` admissions per second for ``--duration`` seconds with ``try_acquire`` (strict
mode: ``acquire(max_wait=0)``), and prints one JSON line: what it admitted, when it ran (Unix
time) and the Redis round trips it made — with ``--timeline``, also the Unix time of every
admission (the chaos tests read when admissions stopped and resumed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import trio

import rakka_trio as rk


async def run(args: argparse.Namespace) -> dict[str, object]:
    limits = rk.RateLimits(
        requests_per_minute=args.rpm,
        requests_burst=args.burst,
        tokens_per_minute=args.tpm,
        tokens_burst=args.tokens_burst,
        mode=args.mode,
        sync_interval=args.sync_interval,
        redis_failure_policy=args.policy,
    )
    config = rk.SupervisorConfig(
        redis_url=args.url,
        node_id=args.node,
        redis_timeout=args.redis_timeout,
        endpoints=[
            rk.EndpointConfig(
                name="shared",
                provider="openai",
                base_url="http://127.0.0.1:9/v1",
                model=args.family,
                credential=rk.StaticCredential("sk-test-multiprocess-shared-key"),
                limits=limits,
            )
        ],
    )
    cost = rk.Cost(input_tokens=args.tokens)
    async with rk.open_supervisor(config) as sup:
        limiter = sup.limiter("shared")
        print("ready", flush=True)
        start = float(await trio.to_thread.run_sync(sys.stdin.readline))
        await trio.sleep(max(0.0, start - time.time()))
        started = time.time()
        admitted = attempts = 0
        interval = 1.0 / args.offered
        next_at = trio.current_time()
        end = next_at + args.duration
        before = limiter.statistics().keys[0].redis_round_trips
        timeline: list[float] = []
        while next_at < end:
            attempts += 1
            got = False
            if args.mode == "strict":
                try:
                    await limiter.acquire(cost, max_wait=0)
                    got = True
                except rk.RateLimitExceeded:
                    pass
            elif limiter.try_acquire(cost) == 0.0:
                got = True
            if got:
                admitted += 1
                if args.timeline:
                    timeline.append(round(time.time(), 4))
            next_at += interval
            await trio.sleep_until(next_at)
        ended = time.time()
        stats = limiter.statistics().keys[0]
    return {
        "node": args.node,
        "admitted": admitted,
        "attempts": attempts,
        "started": started,
        "ended": ended,
        "round_trips": stats.redis_round_trips - before,
        "members": stats.members or math.nan,
        "timeline": timeline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--family", required=True)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--offered", type=float, default=100.0, help="attempts per second")
    parser.add_argument("--rpm", type=int, default=12_000)
    parser.add_argument("--burst", type=int, default=40)
    parser.add_argument("--tpm", type=int, default=1_200_000)
    parser.add_argument("--tokens-burst", type=int, default=4_000)
    parser.add_argument("--tokens", type=int, default=100, help="input tokens per admission")
    parser.add_argument("--mode", default="approximate", choices=["approximate", "strict"])
    parser.add_argument("--sync-interval", type=float, default=1.0)
    parser.add_argument("--redis-timeout", type=float, default=0.5)
    parser.add_argument(
        "--policy", default="local_fallback", choices=["local_fallback", "fail_open", "fail_closed"]
    )
    parser.add_argument("--timeline", action="store_true", help="report every admission time")
    args = parser.parse_args()
    print(json.dumps(trio.run(run, args)), flush=True)


if __name__ == "__main__":
    main()
