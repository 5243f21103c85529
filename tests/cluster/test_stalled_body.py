"""A client whose request body stops arriving, through a node that sends the write on to another:
it gets the 400 RequestTimeout a stand-alone node answers, and the node the write went to is not
counted as failed (it closed the connection because the body stopped, as it should). It was a 503
saying a healthy node "cannot be reached", an ERROR line, and that node asked last for a while.
A primary and a proxy on the SQLite registry, GATEWAY_KEEP_ALIVE_TIMEOUT=1 on the primary."""

from __future__ import annotations

import socket
import urllib.request
from urllib.parse import urlsplit

from .conftest import ClusterNodes


def _metric(node, prefix: str) -> float:
    with urllib.request.urlopen(node.endpoint + "/metrics", timeout=10) as response:
        return sum(float(line.split()[-1]) for line in response.read().decode().splitlines()
                   if line.startswith(prefix))


def _stalled(node, url: str, declared: int, sent: int, chunked: bool = False) -> tuple[bytes, bytes]:
    """PUT ``url`` declaring ``declared`` bytes (one chunk of them with ``chunked``), send ``sent`` of them
    and then nothing: (head, body) of the answer."""
    parts = urlsplit(url)
    framing = (f"Transfer-Encoding: chunked\r\n\r\n{declared:x}\r\n" if chunked
               else f"Content-Length: {declared}\r\n\r\n")
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n{framing}".encode()
                     + b"x" * sent)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def test_a_stalled_body_through_a_proxy_is_a_request_timeout_and_no_peer_failure(tmp_path):
    nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    try:
        # The node the writes go to gives up on a stalled body first (the proxy would answer its
        # client itself after its own 10 s).
        nodes.add("p1", "primary", extra_env={"GATEWAY_KEEP_ALIVE_TIMEOUT": "1"})
        nodes.add("x1", "proxy", extra_env={"GATEWAY_KEEP_ALIVE_TIMEOUT": "10"})
        nodes.wait_known(2)
        s3 = nodes["x1"].client(signature_version="s3v4")
        s3.create_bucket(Bucket="stall")
        upload = s3.create_multipart_upload(Bucket="stall", Key="part")["UploadId"]
        urls = [s3.generate_presigned_url("put_object", Params={"Bucket": "stall", "Key": "put"}),
                s3.generate_presigned_url("upload_part", Params={"Bucket": "stall", "Key": "part",
                                                                 "UploadId": upload, "PartNumber": 1})]
        failures = "gateway_cluster_peer_failures_total"
        before = _metric(nodes["x1"], failures)
        # Small and large parts of the body sent (the node the write goes to has received some of it
        # or none), by length and chunked: it closes the connection, or answers 400 at its HTTP layer.
        cases = [(url, 100_000, 5_000, False) for url in urls]
        cases += [(url, 3_000_000, 1_500_000, False) for url in urls] + [(urls[0], 0x100000, 0x80000, True)]
        for url, declared, sent, chunked in cases:
            head, body = _stalled(nodes["x1"], url, declared, sent, chunked)
            assert head.startswith(b"HTTP/1.1 400"), (url, sent, chunked, head, body)
            assert b"<Code>RequestTimeout</Code>" in body and b"nothing was stored" in body, body
        assert _metric(nodes["x1"], failures) == before  # p1 closed because the body stopped: not a failure
        assert [n["healthy"] for n in nodes.status()] == [True, True]
        s3.put_object(Bucket="stall", Key="put", Body=b"fine")  # both nodes still serve
        assert s3.get_object(Bucket="stall", Key="put")["Body"].read() == b"fine"
        assert s3.list_parts(Bucket="stall", Key="part", UploadId=upload).get("Parts", []) == []
        log = nodes["x1"].log_path.read_text()
        assert "cannot be reached" not in log and "ERROR" not in log, log[-3000:]
    finally:
        nodes.stop()
