"""Payload.again(): a body kept while written, so that a write its store refused goes elsewhere.

The cluster places such a write on another node (services/cluster_nodes/node.py, ``_put_placed``); these
tests pin what the second Payload must be: the same bytes and checks, never a shortened body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest

from gateway import errors
from gateway.payload import Payload


async def client_body(*chunks: bytes):
    for chunk in chunks:
        await asyncio.sleep(0)
        yield chunk


async def read(payload: Payload, stop_after: int | None = None) -> bytes:
    """What a store reads; ``stop_after`` chunks: a store that fails part-way (it stops reading)."""
    got = []
    iterator = payload.__aiter__()
    async for chunk in iterator:
        got.append(chunk)
        if stop_after is not None and len(got) == stop_after:
            await iterator.aclose()
            break
    return b"".join(got)


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def test_a_body_cut_short_by_its_store_is_read_whole_by_the_next():
    async def scenario():
        whole = b"abc" * 100 + b"def" * 100 + b"ghi"
        payload = Payload(client_body(b"abc" * 100, b"def" * 100, b"ghi"), expected_size=len(whole),
                          content_md5=md5(whole), checksum_algorithms=("CRC32",))
        payload.keep_for_retry(1 << 20)
        assert await read(payload, stop_after=1) == b"abc" * 100  # the first store failed here
        second = payload.again()
        assert second is not None
        assert await read(second) == whole
        assert second.etag == hashlib.md5(whole).hexdigest() and second.size == len(whole)
        assert set(second.checksums) == {"CRC32"}
        assert payload.again() is None, "the body belongs to the second Payload now"
        third = second.again()  # a store that failed after reading it all: once more, from what was kept
        assert third is not None and await read(third) == whole

    asyncio.run(scenario())


def test_a_store_that_never_read_the_body_passes_all_of_it_on():
    async def scenario():
        payload = Payload(client_body(b"x" * 10, b"y" * 10), expected_size=20)
        payload.keep_for_retry(100)
        second = payload.again()  # the node could not be reached: nothing was read
        assert await read(second) == b"x" * 10 + b"y" * 10

    asyncio.run(scenario())


def test_the_checks_run_again_on_the_second_write():
    async def scenario():
        payload = Payload(client_body(b"one", b"two"), content_md5=md5(b"something else"))
        payload.keep_for_retry(100)
        assert await read(payload, stop_after=1) == b"one"
        with pytest.raises(errors.BadDigest):
            await read(payload.again())
        checked = []
        payload = Payload(client_body(b"body"))

        async def lock_still_held():
            checked.append(True)

        payload.check_at_end(lock_still_held)
        payload.keep_for_retry(100)
        await read(payload)
        await read(payload.again())
        assert checked == [True, True]

    asyncio.run(scenario())


def test_no_second_write_of_a_body_longer_than_kept_or_whose_reading_failed():
    async def scenario():
        payload = Payload(client_body(b"a" * 60, b"b" * 60))
        payload.keep_for_retry(100)
        assert await read(payload) == b"a" * 60 + b"b" * 60
        assert payload.again() is None, "120 bytes read, 100 kept: the rest is gone"

        async def client_gone():
            yield b"first"
            raise errors.IncompleteBody("the client went away")

        payload = Payload(client_gone())
        payload.keep_for_retry(100)
        with pytest.raises(errors.IncompleteBody):
            await read(payload)
        assert payload.again() is None

        never = asyncio.Event()

        async def slow_client():
            yield b"first"
            await never.wait()
            yield b"never sent"

        payload = Payload(slow_client())
        payload.keep_for_retry(100)
        reading = asyncio.ensure_future(read(payload))
        await asyncio.sleep(0.01)
        reading.cancel()  # the store's read of the client's body was cancelled mid-way
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert payload.again() is None, "what the cancelled read took from the client is lost"

    asyncio.run(scenario())


def test_a_payload_not_asked_to_keep_its_body_has_none_to_give():
    async def scenario():
        payload = Payload(client_body(b"data"))
        assert await read(payload) == b"data"
        assert payload.again() is None

    asyncio.run(scenario())
