"""GuardedCalls: a replica's calls to an actor bounded in number and time, with a pause after
a failure; on plain asyncio futures standing in for Ray object refs."""

from __future__ import annotations

import asyncio

import pytest

from monolith_ray.serve.guarded import GuardedCalls, Skipped


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_late_call_is_cancelled_and_no_call_is_made_for_retry_s() -> None:
    async def run() -> None:
        clock, cancelled, submitted = Clock(), [], []
        guard = GuardedCalls(0.05, 2.0, 8, cancel=cancelled.append, clock=clock)
        loop = asyncio.get_running_loop()

        def never():  # an actor that does not answer in time
            ref = loop.create_future()
            submitted.append(ref)
            return ref

        with pytest.raises(TimeoutError):
            await guard.call(never)
        assert cancelled == submitted and len(submitted) == 1  # dropped at the actor
        clock.now += 1.9
        with pytest.raises(Skipped):
            await guard.call(never)  # within retry_s: not made
        assert len(submitted) == 1
        clock.now += 0.2

        def answer():
            ref = loop.create_future()
            ref.set_result("rows")
            return ref

        assert await guard.call(answer) == "rows"
        assert guard.counts == {"calls": 2, "failed": 1, "skipped": 1}

    asyncio.run(run())


def test_calls_past_max_in_flight_are_not_made_and_a_failure_pauses_calls() -> None:
    async def run() -> None:
        clock = Clock()
        guard = GuardedCalls(5.0, 1.0, 3, cancel=lambda ref: None, clock=clock)
        loop = asyncio.get_running_loop()
        pending = [loop.create_future() for _ in range(3)]
        it = iter(pending)
        waiting = [asyncio.ensure_future(guard.call(lambda: next(it))) for _ in range(3)]
        await asyncio.sleep(0)
        assert guard.in_flight == 3
        with pytest.raises(Skipped):
            await guard.call(lambda: pytest.fail("a fourth call was made"))
        for k, ref in enumerate(pending):
            ref.set_result(k)
        assert await asyncio.gather(*waiting) == [0, 1, 2]
        assert guard.in_flight == 0

        def broken():
            ref = loop.create_future()
            ref.set_exception(RuntimeError("actor died"))
            return ref

        with pytest.raises(RuntimeError, match="actor died"):
            await guard.call(broken)
        with pytest.raises(Skipped):
            await guard.call(broken)
        assert guard.counts == {"calls": 4, "failed": 1, "skipped": 2}

    asyncio.run(run())


def test_a_client_that_goes_away_cancels_its_call_without_pausing_the_others() -> None:
    async def run() -> None:
        cancelled = []
        guard = GuardedCalls(5.0, 10.0, 4, cancel=cancelled.append, clock=Clock())
        loop = asyncio.get_running_loop()
        ref = loop.create_future()
        task = asyncio.ensure_future(guard.call(lambda: ref))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cancelled == [ref] and guard.in_flight == 0
        done = loop.create_future()
        done.set_result(1)
        assert await guard.call(lambda: done) == 1  # not paused
        assert guard.counts["failed"] == 0

    asyncio.run(run())
