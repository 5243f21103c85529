"""The GET fast path's shortcuts change nothing a client can see (docs/performance.md).

- parse_query is dict(parse_qsl(qs, keep_blank_values=True)), only faster;
- the header cache of the local backend never serves stale metadata or bytes;
- spans up to 1 MiB are read in one piece, larger ones streamed: both return the right bytes.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import parse_qsl

from gateway.api.s3.request import parse_query
from gateway_plugins import readcache


def test_parse_query_matches_parse_qsl():
    rng = random.Random(7)
    cases = ["", "a=1&b=2", "uploads", "a=%2F+x&&b", "x=%E2%82%AC&y=%ZZ&z=a=b&=v&k=", "a+b%2B=c+d",
             "%C3%A9=%ff", "&&&", "list-type=2&prefix=a%20b&delimiter=%2F", "\xe9=\xe9%C3%A9", "a=1&a=2"]
    cases += ["".join(rng.choice("ab=&%+2FC3E9") for _ in range(rng.randint(0, 14))) for _ in range(5000)]
    for qs in cases:
        assert parse_query(qs) == dict(parse_qsl(qs, keep_blank_values=True)), qs


def test_rewritten_object_is_never_served_from_the_header_cache(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"first", ContentType="text/plain", Metadata={"v": "1"})
    first = s3.get_object(Bucket=bucket, Key="k")
    assert first["Body"].read() == b"first"
    s3.put_object(Bucket=bucket, Key="k", Body=b"second!", ContentType="image/jpeg", Metadata={"v": "2"})
    second = s3.get_object(Bucket=bucket, Key="k")
    assert second["Body"].read() == b"second!"
    assert second["ContentType"] == "image/jpeg"
    assert second["Metadata"] == {"v": "2"}
    assert second["ETag"] == '"' + hashlib.md5(b"second!").hexdigest() + '"'
    assert second["ETag"] != first["ETag"]


def test_header_cache_is_bounded():
    cache = readcache.HeaderCache(limit=3)
    for i in range(10):
        cache.put(b"h%d" % i, (i, 0))
    assert cache.get(b"h9") == (9, 0) and cache.get(b"h7") == (7, 0)
    assert cache.get(b"h0") is None
    assert cache.get(None) is None


def test_objects_around_the_one_piece_limit_and_ranges(s3, bucket):
    rng = random.Random(3)
    for size in (0, 1, 60 * 1024, 64 * 1024, 200 * 1024, 1024 * 1024, 1024 * 1024 + 1, 3 * 1024 * 1024 + 17):
        data = rng.randbytes(size)
        s3.put_object(Bucket=bucket, Key=f"obj-{size}", Body=data)
        for _ in range(2):  # the second GET parses the header from the cache
            assert s3.get_object(Bucket=bucket, Key=f"obj-{size}")["Body"].read() == data
        if size > 10:
            got = s3.get_object(Bucket=bucket, Key=f"obj-{size}", Range=f"bytes=5-{size - 3}")
            assert got["Body"].read() == data[5:size - 2]
            assert got["ContentRange"] == f"bytes 5-{size - 3}/{size}"


def test_presigned_sigv4_get_as_the_benchmark_sends_it(gateway, s3, bucket):
    data = os.urandom(4096)
    s3.put_object(Bucket=bucket, Key="bench/obj", Body=data)
    signer = gateway.client(signature_version="s3v4")
    url = signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "bench/obj"}, ExpiresIn=60)
    assert "X-Amz-Signature=" in url
    for _ in range(3):
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            assert response.read() == data
    try:
        urllib.request.urlopen(url.replace("X-Amz-Expires=60", "X-Amz-Expires=61"), timeout=10)
    except urllib.error.HTTPError as exc:
        assert exc.code == 403
    else:
        raise AssertionError("a presigned URL with a changed expiry was accepted")


def _metric(gateway, name: str) -> float:
    with urllib.request.urlopen(gateway.endpoint + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_metric_values_past_a_million_are_written_in_full(gateway, s3, bucket):
    # The cache's byte gauge passes 10**6 with 19 objects of 60 KiB; a value written as
    # 1.16837e+06 (six digits) is off by up to 5 and, for a counter, stands still between steps.
    for i in range(19):
        s3.put_object(Bucket=bucket, Key=f"k{i}", Body=b"m" * 61_237)
    time.sleep(readcache.SETTLE_SECONDS + 0.05)
    for i in range(19):
        s3.get_object(Bucket=bucket, Key=f"k{i}")["Body"].read()
    with urllib.request.urlopen(gateway.endpoint + "/metrics", timeout=10) as response:
        text = response.read().decode()
    [line] = [line for line in text.splitlines() if line.startswith("gateway_local_read_cache_bytes{")]
    value = line.rsplit(" ", 1)[1]
    assert value.isdigit() and int(value) >= 19 * (61_237 + readcache.ENTRY_OVERHEAD), line


def test_objects_sent_from_open_files_arrive_whole_with_ranges_and_keep_alive(gateway, s3, bucket):
    # From beyond the first read of a file (64 KiB) to 1 MiB the local backend keeps the open file and
    # the front end sends it with sendfile (write_batch.send_file): bytes, ranges, HEAD and
    # keep-alive order must be unchanged.
    rng = random.Random(11)
    bodies = {f"obj-{size}": rng.randbytes(size) for size in (16 * 1024, 70_000, 200_000, 1024 * 1024)}
    bodies["small"] = b"s" * 1000  # kept as bytes: answers of both kinds on one connection
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    time.sleep(readcache.SETTLE_SECONDS + 0.05)
    for _ in range(3):
        for key, body in bodies.items():
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body, key
    assert _metric(gateway, "gateway_local_read_cache_open_files") >= 3
    body = bodies["obj-200000"]
    for spec, expected in (("bytes=0-0", body[:1]), ("bytes=150000-", body[150000:]), ("bytes=-10", body[-10:])):
        answer = s3.get_object(Bucket=bucket, Key="obj-200000", Range=spec)
        assert answer["Body"].read() == expected and answer["ContentLength"] == len(expected), spec
    assert s3.head_object(Bucket=bucket, Key="obj-70000")["ContentLength"] == 70_000
    # Several requests on one connection, written before reading any answer (pipelined).
    urls = [s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
            for key in ("obj-70000", "small", "obj-1048576", "obj-16384", "small")]
    host, port = gateway.endpoint.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for url in urls:
            target = url.split(gateway.endpoint, 1)[1]
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        stream = sock.makefile("rb")
        for key in ("obj-70000", "small", "obj-1048576", "obj-16384", "small"):
            status = stream.readline()
            headers = {}
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            assert status.startswith(b"HTTP/1.1 200 "), (key, status)
            assert stream.read(int(headers["content-length"])) == bodies[key], key
