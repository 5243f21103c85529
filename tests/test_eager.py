"""gateway/eager.py: a coroutine run at once until it first suspends, then finished by a task."""

from __future__ import annotations

import asyncio

import pytest

from gateway.eager import NeedsTask, Suspended, require_task, start_eagerly


async def _no_wait(value):
    return value


def test_a_coroutine_that_never_waits_returns_its_value_at_once():
    assert start_eagerly(_no_wait(42)) == 42


def test_an_error_before_any_wait_reaches_the_caller():
    async def fails():
        raise KeyError("x")

    with pytest.raises(KeyError):
        start_eagerly(fails())


def test_a_suspended_coroutine_is_finished_by_a_task_where_it_stopped():
    steps = []

    async def waits(future):
        steps.append("before")
        got = await future
        steps.append("after future")
        await asyncio.sleep(0)  # a bare yield, too
        steps.append("after sleep")
        return got * 2

    async def main():
        future = asyncio.get_running_loop().create_future()
        started = start_eagerly(waits(future))
        assert isinstance(started, Suspended) and steps == ["before"]
        task = asyncio.ensure_future(started)
        await asyncio.sleep(0)
        assert steps == ["before"]  # still waiting on the future
        future.set_result(21)
        return await task

    assert asyncio.run(main()) == 42
    assert steps == ["before", "after future", "after sleep"]


def test_errors_after_the_first_wait_reach_whoever_awaits_the_task():
    async def waits_then_fails(future):
        await future
        raise ValueError("late")

    async def main():
        future = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(start_eagerly(waits_then_fails(future)))
        future.set_exception(OSError("the future failed"))
        with pytest.raises(OSError):
            await task
        other = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(start_eagerly(waits_then_fails(other)))
        other.set_result(None)
        with pytest.raises(ValueError, match="late"):
            await task

    asyncio.run(main())


def test_cancelling_the_task_cancels_the_coroutine_and_runs_its_cleanup():
    cleaned = []

    async def waits(future):
        try:
            await future
        finally:
            cleaned.append(True)

    async def main():
        future = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(start_eagerly(waits(future)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert future.cancelled()  # the cancellation reached the awaited future, as with a normal task

    asyncio.run(main())
    assert cleaned == [True]


def test_require_task_refuses_an_eager_start_and_allows_a_task():
    async def needs_a_task():
        require_task()
        await asyncio.sleep(0)
        return "done"

    outcome = []

    def in_a_callback():  # where the HTTP front end starts requests: no task is running there
        try:
            start_eagerly(needs_a_task())
        except NeedsTask:
            outcome.append("refused")

    async def main():
        asyncio.get_running_loop().call_soon(in_a_callback)
        await asyncio.sleep(0.01)
        assert outcome == ["refused"]
        assert await asyncio.ensure_future(needs_a_task()) == "done"
        assert not issubclass(NeedsTask, Exception)  # no `except Exception` on the way can swallow it

    asyncio.run(main())
