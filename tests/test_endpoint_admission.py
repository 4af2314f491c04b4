"""An endpoint call's rate-limit reservation: a call that fails before its request goes out
gets its estimate back; once the request may have been written, the estimate stands.

Nothing here reaches a server (the calls stop before sending), so virtual time is used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import rakka_trio as rk

pytestmark = pytest.mark.trio

TPM = 6_000  # 100 tokens a second, a burst of one minute's worth
# ~4 characters per prompt token (at least 1) + max_tokens: an estimate of 1,000 tokens.
REQUEST = rk.ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=999)


@asynccontextmanager
async def supervisor(credential: rk.Credential | None = None) -> AsyncIterator[rk.Supervisor]:
    cfg = rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(
                name="ep",
                provider="openai",
                base_url="http://127.0.0.1:9/v1",  # never reached
                model="m",
                credential=credential,
                retry=rk.RetryPolicy(max_retries=0),
                limits=rk.RateLimits(tokens_per_minute=TPM, max_wait=None),
            )
        ]
    )
    async with rk.open_supervisor(cfg) as sup:
        yield sup


def tokens_available(sup: rk.Supervisor) -> float:
    (key,) = sup.limiter("ep").statistics().keys
    (tokens,) = key.limits
    return tokens.available


async def test_a_call_cancelled_before_its_request_went_out_gets_its_estimate_back(
    mock_clock: trio.testing.MockClock,
) -> None:
    async def token_that_never_comes() -> str:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with supervisor(rk.CallableCredential(token_that_never_comes)) as sup:
        with trio.move_on_after(1.0) as scope:  # cancelled while the credential resolves
            async with sup.endpoint("ep").stream(REQUEST):
                pytest.fail("the call cannot start without its credential")
        assert scope.cancelled_caught
        assert tokens_available(sup) == pytest.approx(TPM)
        (key,) = sup.limiter("ep").statistics().keys
        assert (key.admitted, key.in_flight) == (1, 0)


async def test_a_call_whose_breaker_opened_while_it_waited_gets_its_estimate_back(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with supervisor() as sup:
        sup.limiter("ep").acquire_nowait(rk.Cost(input_tokens=TPM))  # drained: 10 s to wait
        start = trio.current_time()

        async def open_breaker() -> None:
            await trio.sleep(5.0)
            sup.force_open("ep", duration=300.0, reason="incident")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_breaker)
            with pytest.raises(rk.CircuitOpen):
                async with sup.endpoint("ep").stream(REQUEST):
                    pytest.fail("the breaker is open")
        assert trio.current_time() - start == pytest.approx(10.0)  # admitted, then refused
        # The 1,000 tokens refilled in the wait are there again: the refused call spent none.
        assert tokens_available(sup) == pytest.approx(1_000, abs=1)
