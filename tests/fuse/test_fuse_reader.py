"""The read path below FUSE: the streamed GET read into callers' buffers, out of order and in parallel as the
kernel's read-ahead sends requests; the read-ahead window of a real mount; the direct_io choice."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from gateway.fuse.cache import FILE, Attr
from gateway.fuse.client import ObjectClient
from gateway.fuse.files import FileOptions, RemoteReader, _Stream
from gateway.fuse.fs import GatewayFS, MountOptions
from gateway.fuse.readahead import mount_device, set_read_ahead

KiB, MiB = 1024, 1024 * 1024
SIZE = 6 * MiB + 12_345  # not a multiple of any read size
DATA = random.Random(6).randbytes(SIZE)


@pytest.fixture(scope="module")
def client(fuse_gw):
    client = ObjectClient(fuse_gw.endpoint, fuse_gw.access_key, fuse_gw.secret_key, pool_size=8)
    client.create_bucket("reader")
    client.put("reader", "object.bin", DATA, SIZE)
    yield client
    client.close()


def _reader(client, first: int = 128 * KiB) -> RemoteReader:
    return RemoteReader(client, "reader", "object.bin", SIZE, DATA[:first], FileOptions())


def _read(reader: RemoteReader, offset: int, length: int) -> bytes:
    buffer = bytearray(length)
    filled = reader.read_into(offset, memoryview(buffer))
    return bytes(buffer[:filled])


def _delta(client, before: dict) -> dict:
    return {name: client.stats[name] - before.get(name, 0) for name in
            ("GET", "streams", "stream_buffered", "stream_misses", "random_reads")}


def test_sequential_reads_are_one_stream_into_the_callers_buffers(client):
    reader = _reader(client)
    before = dict(client.stats)
    out = [_read(reader, offset, MiB) for offset in range(0, SIZE, MiB)]
    reader.close()
    assert b"".join(out) == DATA
    assert _delta(client, before) == {"GET": 1, "streams": 1, "stream_buffered": 0, "stream_misses": 0,
                                      "random_reads": 0}


def test_reads_ahead_of_the_stream_buffer_the_bytes_behind_them(client):
    # As the page cache's read-ahead does: 128 KiB from the lookup, then requests that overtake each other.
    reader = _reader(client)
    before = dict(client.stats)
    assert _read(reader, 0, 128 * KiB) == DATA[: 128 * KiB]
    assert _read(reader, 128 * KiB, 128 * KiB) == DATA[128 * KiB: 256 * KiB]  # starts the stream
    # 1 MiB ahead: waits briefly for the reads behind it, which do not come, then buffers them.
    assert _read(reader, 1280 * KiB, MiB) == DATA[1280 * KiB: 2304 * KiB]
    assert _read(reader, 256 * KiB, MiB) == DATA[256 * KiB: 1280 * KiB]  # from the buffer
    assert _read(reader, 2304 * KiB, SIZE) == DATA[2304 * KiB:]  # the rest: straight from the stream
    assert _read(reader, SIZE, 10) == b""
    reader.close()
    assert _delta(client, before) == {"GET": 1, "streams": 1, "stream_buffered": MiB, "stream_misses": 0,
                                      "random_reads": 0}


def test_a_read_into_a_gap_fetches_its_range(client):
    # Bytes received straight into one read's buffer are not kept: a later read of them costs a ranged GET.
    reader = _reader(client, first=0)
    before = dict(client.stats)
    assert _read(reader, 0, MiB) == DATA[:MiB]
    assert _read(reader, MiB, MiB) == DATA[MiB: 2 * MiB]
    assert _read(reader, 512 * KiB, 4 * KiB) == DATA[512 * KiB: 516 * KiB]
    reader.close()
    delta = _delta(client, before)
    assert (delta["streams"], delta["stream_misses"], delta["GET"]) == (1, 1, 2)


@pytest.mark.parametrize("fill_ahead", [_Stream.FILL_AHEAD, 1])
def test_parallel_out_of_order_reads_get_their_bytes(client, monkeypatch, fill_ahead):
    # Four threads, as FUSE's, take 1 MiB requests four at a time in any order (the kernel's 4 MiB window).
    # The thread that reaches a waiting read fills it; with fill_ahead=1 only one, then it wakes the next.
    monkeypatch.setattr(_Stream, "FILL_AHEAD", fill_ahead)
    reader = _reader(client)
    before = dict(client.stats)
    offsets = list(range(128 * KiB, SIZE, MiB))
    results: dict[int, bytes] = {}
    rng = random.Random(1)
    for start in range(0, len(offsets), 4):
        batch = offsets[start: start + 4]
        rng.shuffle(batch)
        threads = [threading.Thread(target=lambda o=o: results.__setitem__(o, _read(reader, o, MiB)))
                   for o in batch]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    reader.close()
    assert DATA[: 128 * KiB] + b"".join(results[o] for o in offsets) == DATA
    delta = _delta(client, before)
    assert (delta["streams"], delta["stream_misses"], delta["random_reads"]) == (1, 0, 0)


def test_reads_waiting_on_a_replaced_stream_fetch_their_ranges(client):
    # A jump ahead replaces the stream; a read still waiting on the old one gets its bytes by a ranged GET.
    reader = _reader(client)
    _read(reader, 128 * KiB, MiB)
    old = reader._stream
    waiting: list[bytes] = []
    thread = threading.Thread(target=lambda: waiting.append(_read(reader, 2176 * KiB, MiB)))
    with old.lock:  # hold the stream while the read comes in, so that it waits
        thread.start()
        time.sleep(0.05)
        old.closed = True
    thread.join(timeout=30)
    assert waiting == [DATA[2176 * KiB: 3200 * KiB]]
    before = dict(client.stats)
    assert _read(reader, 5 * MiB, 4 * KiB) == DATA[5 * MiB: 5 * MiB + 4 * KiB]
    reader.close()
    assert _delta(client, before)["streams"] == 1  # the closed stream was replaced


def test_a_straggler_behind_the_stream_does_not_stop_it(client):
    reader = _reader(client, first=0)
    for offset in range(0, 4 * MiB, MiB):
        _read(reader, offset, MiB)
    stream = reader._stream
    before = dict(client.stats)
    assert _read(reader, 1536 * KiB, 4 * KiB) == DATA[1536 * KiB: 1540 * KiB]  # in a gap: a ranged GET
    assert _read(reader, 4 * MiB, MiB) == DATA[4 * MiB: 5 * MiB]
    assert reader._stream is stream
    assert _read(reader, 0, 4 * KiB) == DATA[: 4 * KiB]  # further behind, within the window: the same
    assert reader._stream is stream
    reader.close()
    delta = _delta(client, before)
    assert (delta["streams"], delta["stream_misses"], delta["GET"]) == (0, 2, 2)


def test_direct_io_only_for_big_read_only_opens(client):
    fs = GatewayFS(client, MountOptions(direct_io_min=4 * MiB))
    try:
        fs.attrs.put("/reader/object.bin", Attr(FILE, SIZE, etag="x"))
        fs.attrs.put("/reader/small.bin", Attr(FILE, MiB, etag="y"))
        assert fs.direct_io(fs.open("/reader/object.bin", os.O_RDONLY))
        assert not fs.direct_io(fs.open("/reader/small.bin", os.O_RDONLY))
        assert not fs.direct_io(fs.open("/reader/object.bin", os.O_RDWR))
        off = GatewayFS(client, MountOptions())  # the default: never
        off.attrs.put("/reader/object.bin", Attr(FILE, SIZE, etag="x"))
        assert not off.direct_io(off.open("/reader/object.bin", os.O_RDONLY))
        off.close()
    finally:
        fs.close()


def test_mount_device_and_read_ahead_files(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "42 22 0:39 / /mnt/with\\040space rw,nosuid - fuse.gateway gateway:http://x rw,user_id=0\n"
    )
    assert mount_device("/mnt/with space", str(mountinfo)) == "0:39"
    assert mount_device("/mnt/other", str(mountinfo)) is None
    (tmp_path / "bdi" / "0:39").mkdir(parents=True)
    knob = tmp_path / "bdi" / "0:39" / "read_ahead_kb"
    knob.write_text("128\n")
    assert set_read_ahead("0:39", 4096, str(tmp_path / "bdi"))
    assert knob.read_text() == "4096"
    knob.write_text("8192\n")
    assert set_read_ahead("0:39", 4096, str(tmp_path / "bdi")) and knob.read_text() == "8192\n"  # never lowered
    assert not set_read_ahead("0:40", 4096, str(tmp_path / "bdi"))  # no such device: logged, not raised


def test_a_mount_raises_its_read_ahead_window(mnt):
    device = mount_device(str(mnt.path))
    assert device is not None
    os.stat(mnt.path)
    knob = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
    if os.geteuid() == 0:
        # Raised in a thread once the mount is up; give it a moment on a loaded machine.
        for _ in range(100):
            if int(knob.read_text()) >= 4096:
                break
            time.sleep(0.05)
        assert int(knob.read_text()) >= 4096
    else:
        assert "could not raise the read-ahead" in mnt.log()


def test_truncate_by_name_while_a_late_release_is_pending(fuse_gw, tmp_path):
    # FUSE sends RELEASE asynchronously: `read_bytes(); os.truncate(p, 10); read_bytes()` can reach the
    # filesystem as open, truncate-by-name, open, release. The truncate must be stored at once and the
    # reopen must see 10 bytes, whichever order the old handle's release arrives in.
    client = ObjectClient(fuse_gw.endpoint, fuse_gw.access_key, fuse_gw.secret_key)
    client.put("reader", "log.txt", b"one", 3)
    fs = GatewayFS(client, MountOptions(spool_dir=str(tmp_path)))
    try:
        old = fs.open("/reader/log.txt", os.O_RDONLY)
        fs.truncate("/reader/log.txt", 10)
        assert client.get_range("reader", "log.txt", 0, 100) == b"one" + b"\0" * 7
        new = fs.open("/reader/log.txt", os.O_RDONLY)
        fs.release(old)
        assert fs.lookup("/reader/log.txt").size == 10
        assert fs.read(new, 100, 0) == b"one" + b"\0" * 7
        fs.release(new)
        assert fs.read(fs.open("/reader/log.txt", os.O_RDONLY), 100, 0) == b"one" + b"\0" * 7
    finally:
        fs.close()
