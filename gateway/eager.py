"""Run a coroutine at once, in the caller's stack, until it first has to wait.

The object GET of a local hit never waits: the backend's ``get`` is a coroutine
because a relay or a remote backend may have to, but the local backend answers
from the page cache without awaiting anything. Creating a task per request
costs more than such a GET's whole backend work (docs/performance.md), so the
HTTP front end (gateway/api/protocol.py) starts the request's coroutine
itself; only when it really suspends does a task take over, resuming it where
it stopped. This is what Python 3.12's eager tasks do; the gateway supports 3.11.

Until that first suspension no task is running, and some asyncio APIs need one
(``asyncio.timeout``, and so aiohttp's requests). So only backends that say
their reads work that way are started eagerly (``Backend.eager_reads``), and
code that needs a task calls ``require_task()`` first: outside a task it raises
``NeedsTask``, and the front end answers that request through ASGI instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class NeedsTask(BaseException):
    """Raised by require_task() in an eager start. A BaseException, so that no ``except Exception``
    on the way (error mapping, retries) mistakes it for a failure: it must reach the front end."""


def require_task() -> None:
    """Call before anything that needs a running asyncio task (timeouts, aiohttp)."""
    if asyncio.current_task() is None:
        raise NeedsTask()


def stray_cancellation() -> bool:
    """Whether a CancelledError caught now is some code's own (a plugin's misused timeout), not this
    task being cancelled (its client went away), which must go on up. Outside a task it cannot be
    told, and is taken for a real cancellation."""
    task = asyncio.current_task()
    return task is not None and not task.cancelling()


class Suspended:
    """A coroutine that ran until its first real wait: ``await`` this (in a task) to finish it."""

    __slots__ = ("coro", "waiting_on")

    def __init__(self, coro: Coroutine, waiting_on: Any):
        self.coro = coro
        self.waiting_on = waiting_on  # what the coroutine yielded: a future (or None for a bare yield)

    def __await__(self) -> Generator[Any, Any, Any]:
        # Hand what the coroutine yielded to the task driving us, then pass the task's answers
        # (a send after the future is done, or a throw such as a cancellation) straight through:
        # what `yield from coro` would do, had it not made its first step elsewhere.
        yielded = self.waiting_on
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # noqa: B036 - cancellation must reach the coroutine too
                try:
                    yielded = self.coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    yielded = self.coro.send(sent)
                except StopIteration as done:
                    return done.value

    def close(self) -> None:
        """Drop a suspended coroutine without finishing it (its finally blocks run)."""
        self.coro.close()


def start_eagerly(coro: Coroutine[Any, Any, T]) -> T | Suspended:
    """Run ``coro`` until it returns (its value is returned) or first suspends (a ``Suspended``).

    Exceptions it raises before suspending (NeedsTask among them) propagate to the caller.
    """
    try:
        waiting_on = coro.send(None)
    except StopIteration as done:
        return done.value
    return Suspended(coro, waiting_on)
