"""What a disk that fails with EIO for a while leaves behind on a stand-alone gateway, on
gateway/testing/faulty_disk.py (a FUSE passthrough failing every call on demand). The answers
while it fails are in tests/api/test_errors.py; here: nothing stays behind once it works."""

from __future__ import annotations

import http.client
import time
import urllib.parse

from gateway.testing.faulty_disk import FaultyDisk
from gateway.testing.server import GatewayProcess

CHUNK = 256 * 1024


def put_cut_by_failing_disk(s3, key: str, size: int, disk) -> int:
    """PUT ``size`` bytes through a presigned URL, failing ``disk`` after a third of the body; the status."""
    url = urllib.parse.urlsplit(s3.generate_presigned_url("put_object", Params={"Bucket": "faces", "Key": key},
                                                          ExpiresIn=600))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest("PUT", f"{url.path}?{url.query}", skip_accept_encoding=True)
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        sent = 0
        try:
            while sent < size:
                conn.send(b"n" * CHUNK)
                sent += CHUNK
                if sent == (size // 3) // CHUNK * CHUNK:
                    disk.fail()
        except OSError:
            pass  # the gateway answered and closed before the whole body was sent
        return conn.getresponse().status
    finally:
        conn.close()


def temp_files(gw) -> list[str]:
    return [p.name for p in (gw.data_dir / ".gateway" / "tmp").rglob("*") if p.is_file()]


def test_the_temp_files_of_writes_cut_by_a_failing_disk_go_once_it_works_and_the_sweep_says_one_line(tmp_path):
    """Before, a failed write whose temp file could not be removed (the disk failing) kept it, as
    large as the body received, until the gateway restarted; and the upload sweep logged a
    traceback each time it ran while the disk failed."""
    env = {"GATEWAY_MULTIPART_EXPIRY": "2"}  # the sweep (which also removes temp files) every 0.5 s
    with FaultyDisk(tmp_path / "backing", tmp_path / "disk") as disk, \
            GatewayProcess(disk.path / "cv-storage", env=env) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="faces")

        # The disk works again and nothing is written: the next sweep removes it.
        assert put_cut_by_failing_disk(s3, "first", 12 << 20, disk) == 503
        time.sleep(1.5)  # sweeps while the disk fails
        disk.heal()
        deadline = time.monotonic() + 10
        while temp_files(gw) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert temp_files(gw) == [], "the temp file of the failed write is still there"

        # A write that works removes what the failed ones left, at once.
        assert put_cut_by_failing_disk(s3, "second", 12 << 20, disk) == 503
        disk.heal()
        s3.put_object(Bucket="faces", Key="works", Body=b"w" * 1000)
        assert temp_files(gw) == []

        for key in ("first", "second"):
            assert "Contents" not in s3.list_objects_v2(Bucket="faces", Prefix=key)
        log = gw.log()
        assert "Traceback" not in log, log[-3000:]
        assert "looking for unfinished multipart uploads in backend 'local'" in log and "Input/output error" in log
