"""``retry.Backoff`` and ``retry.retry``: the project's one backoff helper."""

from __future__ import annotations

import asyncio

import pytest

from trustgraph_pubsub.retry import Backoff, retry


def test_ceilings_double_up_to_the_cap() -> None:
    b = Backoff(base=0.1, cap=1.0, jitter=False)
    assert [b.next_delay() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    b.reset()
    assert b.next_delay() == pytest.approx(0.1)


def test_full_jitter_stays_within_bounds_and_varies() -> None:
    for attempt in range(8):
        ceiling = min(2.0, 0.1 * 2**attempt)
        delays = []
        for _ in range(200):
            b = Backoff(base=0.1, cap=2.0)
            b.attempt = attempt
            delays.append(b.next_delay())
        assert all(0 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 150  # jittered, not a constant
        assert max(delays) > ceiling * 0.8  # and spread over the range


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base=0)
    with pytest.raises(ValueError, match="cap"):
        Backoff(base=2, cap=1)


async def test_retry_until_success() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ConnectionError("not yet")
        return "ok"

    assert await retry(flaky, retry_on=(ConnectionError,), backoff=Backoff(0.001, 0.01)) == "ok"
    assert calls == 4


async def test_retry_gives_up_after_attempts_with_the_last_error() -> None:
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError(f"failure {calls}")

    with pytest.raises(ConnectionError, match="failure 3"):
        await retry(failing, retry_on=(ConnectionError,), attempts=3, backoff=Backoff(0.001, 0.01))
    assert calls == 3


async def test_retry_respects_the_deadline() -> None:
    async def failing() -> None:
        raise ConnectionError("down")

    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(ConnectionError):
        await retry(failing, retry_on=(ConnectionError,), deadline=0.2,
                    backoff=Backoff(0.01, 0.05, jitter=False))
    assert 0.1 < loop.time() - began < 1.0


async def test_other_errors_propagate_at_once() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await retry(broken, retry_on=(ConnectionError,), attempts=5)
    assert calls == 1


def test_a_long_outage_never_overflows() -> None:
    b = Backoff(base=0.1, cap=10.0, jitter=False)
    for _ in range(5000):
        delay = b.next_delay()
    assert delay == 10.0
