"""The objects every server reads: written through the gateway, copied as plain files for nginx.

The gateway stores each object as one file with a small header before the data (plugins/fslayout.py);
nginx gets plain files with the same bytes under ``<plain>/<bucket>/<key>`` on the same filesystem.
Requests are presigned URLs (boto3) written one per line as ``METHOD path?query`` for wrk.lua; nginx
is sent the very same request lines (it ignores the query), so both parse requests of the same size.
"""

from __future__ import annotations

import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

BUCKET = "bench"
PUT_BUCKET = "bench-put"
URL_EXPIRY_S = 3600


def size_label(size: int) -> str:
    return f"{size // (1 << 20)} MiB" if size >= 1 << 20 else f"{size // 1024} KiB"


def keys_for(size: int, count: int) -> list[str]:
    prefix = size_label(size).replace(" ", "").lower()
    return [f"{prefix}/obj-{i:05d}" for i in range(count)]


def write_objects(gateway, plain_root: str, size: int, keys: list[str], threads: int = 8) -> None:
    """PUT every key through the gateway (boto3) and write the same bytes as a plain file for nginx."""

    def write(chunk: list[str]) -> None:
        s3 = gateway.client()
        for key in chunk:
            data = os.urandom(size)
            s3.put_object(Bucket=BUCKET, Key=key, Body=data)
            path = os.path.join(plain_root, BUCKET, key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)

    chunks = [keys[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, chunks))


def request_lines(gateway, method: str, bucket: str, keys: list[str]) -> list[str]:
    """``METHOD /bucket/key?X-Amz-...`` for each key: SigV4 presigned URLs, valid for an hour.

    boto3 presigns with SigV2 for a custom endpoint unless told otherwise; SigV4 is what the issue
    asks to measure (and the costlier check: a SHA-256 and an HMAC per request)."""
    s3 = gateway.client(signature_version="s3v4")
    operation = {"GET": "get_object", "PUT": "put_object"}[method]
    lines = []
    for key in keys:
        url = s3.generate_presigned_url(operation, Params={"Bucket": bucket, "Key": key}, ExpiresIn=URL_EXPIRY_S)
        parts = urlsplit(url)
        lines.append(f"{method} {parts.path}?{parts.query}")
    return lines


def write_lines(path: str, lines: list[str]) -> str:
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def check_same_bytes(gateway_port: int, nginx_port: int, line: str, plain_root: str) -> None:
    """One request to each server before timing: both must answer 200 with the object's bytes."""
    _, target = line.split(" ", 1)
    path = target.split("?", 1)[0]
    with open(os.path.join(plain_root, path.lstrip("/")), "rb") as f:
        expected = f.read()
    for port in (gateway_port, nginx_port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{target}", timeout=10) as response:
            body = response.read()
        if response.status != 200 or body != expected:
            raise RuntimeError(f"port {port} answered {response.status} with {len(body)} bytes for {path}; "
                               f"expected 200 with {len(expected)} bytes")


def all_files(root: str) -> list[str]:
    found = []
    for directory, _, names in os.walk(root):
        found.extend(os.path.join(directory, name) for name in names)
    return found
