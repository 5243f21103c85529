"""A Complete and an Abort of one upload, or two Completes, take turns (gateway/backend.py
``_one_at_a_time``): run together, both could succeed, the object stored though the Abort answered
204, or two different part lists both answered 200. A real local backend; its object write waits
on an event, so the second request arrives while the first is assembling."""

from __future__ import annotations

import asyncio

import pytest
from gateway_plugins.local import LocalBackend

from gateway import backend as backend_module
from gateway import errors
from gateway.backend import ObjectMeta, Payload
from gateway.services.upload_reaper import UploadReaper

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class AssemblingSlowly(LocalBackend):
    """A local backend whose object writes (not parts, which go to .multipart) wait for ``go_on``."""

    def __init__(self, **options):
        super().__init__(**options)
        self.assembling = asyncio.Event()
        self.go_on = asyncio.Event()

    async def put(self, bucket, key, payload, meta):
        if not bucket.startswith("."):
            self.assembling.set()
            await self.go_on.wait()
        return await super().put(bucket, key, payload, meta)


@pytest.fixture
async def store(tmp_path):
    backend = AssemblingSlowly(root=str(tmp_path / "cv-storage"))
    await backend.start()
    await backend.create_bucket("faces")
    yield backend
    await backend.close()


async def _upload(store, *bodies: bytes):
    upload = await store.create_multipart("faces", "big.bin", ObjectMeta())
    parts = []
    for number, body in enumerate(bodies, 1):
        part = await store.upload_part("faces", "big.bin", upload.upload_id, number, Payload.from_bytes(body))
        parts.append((number, part.etag))
    return upload.upload_id, parts


def _files_of(tmp_path, upload_id):
    return [p for p in (tmp_path / "cv-storage").rglob("*") if upload_id in str(p) and p.is_file()]


async def _read(store, key):
    reader = await store.get("faces", key)
    async with reader:
        return await reader.read_all()


async def _second_while_the_first_assembles(store, first, second):
    """Start ``first``, start ``second`` once the first is assembling, and let the first go on once
    the second has had the time to run (old code) or is waiting for its turn: (first's result, second's
    task)."""
    first_task = asyncio.ensure_future(first)
    await asyncio.wait_for(store.assembling.wait(), 10)
    second_task = asyncio.ensure_future(second)
    await asyncio.sleep(0.2)
    assert not second_task.done(), "the second request did not wait for the first one's turn"
    store.go_on.set()
    return await first_task, second_task


async def test_an_abort_during_a_complete_finds_no_upload_and_the_object_stays(store, tmp_path):
    upload_id, parts = await _upload(store, b"a" * backend_module.MIN_PART_SIZE, b"b" * 1000)
    info, abort = await _second_while_the_first_assembles(
        store, store.complete_multipart("faces", "big.bin", upload_id, parts),
        store.abort_multipart("faces", "big.bin", upload_id))
    with pytest.raises(errors.NoSuchUpload):
        await abort  # S3's answer to an Abort of a completed upload: the client knows the object is there
    assert info.size == backend_module.MIN_PART_SIZE + 1000
    assert await _read(store, "big.bin") == b"a" * backend_module.MIN_PART_SIZE + b"b" * 1000
    assert _files_of(tmp_path, upload_id) == []


async def test_a_second_complete_with_other_parts_finds_no_upload(store):
    upload_id, parts = await _upload(store, b"a" * backend_module.MIN_PART_SIZE, b"b" * 1000)
    info, other = await _second_while_the_first_assembles(
        store, store.complete_multipart("faces", "big.bin", upload_id, parts),
        store.complete_multipart("faces", "big.bin", upload_id, parts[:1]))
    with pytest.raises(errors.NoSuchUpload):
        await other  # not a 200 for an object it did not make
    assert info.etag.endswith("-2")
    assert (await store.head("faces", "big.bin")).etag == info.etag


async def test_a_complete_during_an_abort_finds_no_upload(store, tmp_path):
    upload_id, parts = await _upload(store, b"a" * 1000)
    store.go_on.set()
    gate = asyncio.Event()
    original = store._delete_upload

    async def slow_delete(bucket, upload):  # the abort holds the upload's turn while it removes it
        await gate.wait()
        await original(bucket, upload)

    store._delete_upload = slow_delete
    abort = asyncio.ensure_future(store.abort_multipart("faces", "big.bin", upload_id))
    await asyncio.sleep(0.05)
    complete = asyncio.ensure_future(store.complete_multipart("faces", "big.bin", upload_id, parts))
    await asyncio.sleep(0.2)
    assert not complete.done()
    gate.set()
    await abort
    with pytest.raises(errors.NoSuchUpload):
        await complete
    assert not await store.exists("faces", "big.bin")
    assert _files_of(tmp_path, upload_id) == []


async def test_an_abort_that_waits_too_long_is_a_slow_down_and_the_reaper_passes_over_it(store, monkeypatch):
    monkeypatch.setattr(backend_module, "UPLOAD_TURN_WAIT", 0.1)
    upload_id, parts = await _upload(store, b"a" * 1000)
    complete = asyncio.ensure_future(store.complete_multipart("faces", "big.bin", upload_id, parts))
    await asyncio.wait_for(store.assembling.wait(), 10)
    with pytest.raises(errors.SlowDown, match=f"{upload_id} is being completed or aborted"):
        await store.abort_multipart("faces", "big.bin", upload_id)
    reaper = UploadReaper({"local": store}, expiry=0.001)  # every upload has expired
    assert await reaper.sweep() == 0  # the one being completed is left to its Complete
    store.go_on.set()
    assert (await complete).size == 1000
    assert await store.list_uploads("faces") == []
    assert len(backend_module._UPLOAD_TURNS) == 0  # nothing kept once nobody waits


async def test_assembling_or_copying_a_large_object_gives_the_event_loop_turns(tmp_path):
    """A local read feeding a local write never waited: a 1 GiB Complete or CopyObject held the event loop
    for 2.5 s (every request to the node waited; its stall watch took it for a stopped process and
    refused peer writes). Counted in turns, not time: a task that only yields counts how often it ran."""
    store = LocalBackend(root=str(tmp_path / "cv-storage"), fsync=False)
    await store.start()
    await store.create_bucket("faces")
    try:
        size = backend_module.MIN_PART_SIZE
        upload = await store.create_multipart("faces", "big.bin", ObjectMeta())
        parts = []
        for number in (1, 2, 3):
            part = await store.upload_part("faces", "big.bin", upload.upload_id, number,
                                           Payload.from_bytes(bytes([number]) * size))
            parts.append((number, part.etag))
        chunks = 3 * size // backend_module.SEND_CHUNK
        for work in (lambda: store.complete_multipart("faces", "big.bin", upload.upload_id, parts),
                     lambda: store.copy("faces", "big.bin", "faces", "copy.bin")):
            turns, done = 0, False

            async def ticking():
                nonlocal turns
                while not done:
                    turns += 1
                    await asyncio.sleep(0)

            ticker = asyncio.ensure_future(ticking())
            await asyncio.sleep(0)
            turns = 0
            info = await work()
            done = True
            await ticker
            assert info.size == 3 * size
            assert turns >= chunks, (turns, chunks)  # a turn between chunks, at the least
    finally:
        await store.close()


async def test_a_part_uploaded_again_during_a_complete_is_not_assembled_under_the_old_etag(store):
    """UploadPart does not wait for a Complete: a part sent again while the Complete assembled was read
    in its place, and the object held its bytes under the ETag of the part the Complete named (and of
    another size, an IncompleteBody 400 that blamed the client's body). The Complete is InvalidPart,
    nothing is stored, and the upload completes with the part's new ETag."""
    upload_id, parts = await _upload(store, b"a" * backend_module.MIN_PART_SIZE, b"b" * 1000)
    complete = asyncio.ensure_future(store.complete_multipart("faces", "big.bin", upload_id, parts))
    await asyncio.wait_for(store.assembling.wait(), 10)
    again = await store.upload_part("faces", "big.bin", upload_id, 2, Payload.from_bytes(b"c" * 1000))
    store.go_on.set()
    with pytest.raises(errors.InvalidPart):
        await complete
    with pytest.raises(errors.NoSuchKey):
        await store.head("faces", "big.bin")
    info = await store.complete_multipart("faces", "big.bin", upload_id, [parts[0], (2, again.etag)])
    assert await _read(store, "big.bin") == b"a" * backend_module.MIN_PART_SIZE + b"c" * 1000
    assert info.etag.endswith("-2") and info.size == backend_module.MIN_PART_SIZE + 1000
