"""A rolling upgrade: a holder of an older version, without the S3 read route (gateway/cluster/forward.py).

The older node is a real gateway whose peers reach it through a front that answers the S3 read
route as a version without it does (405, ``x-cluster-error: MethodNotAllowed``) and passes every
other peer request on. Reads through a newer node are right either way; they used to cost the
older holder two requests each (the pass-through's 405, then the usual relay); now the newer node
remembers the 405 and relays that holder's reads the usual way for a while.
"""

from __future__ import annotations

import http.client
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gateway.cluster.forward import S3_READ_ROUTE
from gateway.testing.server import free_port

from .conftest import ClusterNodes
from .test_pass_through import passed

_DROPPED = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}


class OlderVersionFront(ThreadingHTTPServer):
    """In front of ``target_port``: the S3 read route answered 405, everything else passed on."""

    daemon_threads = True

    def __init__(self, port: int, target_port: int):
        self.target_port = target_port
        self.read_route_calls = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: OlderVersionFront

    def log_message(self, *args) -> None:
        pass

    def _answer(self) -> None:
        if self.path.startswith(S3_READ_ROUTE + "/"):
            with self.server.lock:
                self.server.read_route_calls += 1
            body = f"no peer route {self.command} {self.path.split('?')[0]}".encode()
            self._send(405, [("x-cluster-error", "MethodNotAllowed")], body)
            return
        length = int(self.headers.get("content-length") or 0)
        sent = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.target_port, timeout=30)
        try:
            upstream.request(self.command, self.path, body=sent,
                             headers={k: v for k, v in self.headers.items() if k.lower() not in _DROPPED})
            response = upstream.getresponse()
            body = response.read()
            self._send(response.status, [(k, v) for k, v in response.getheaders() if k.lower() not in _DROPPED],
                       body, length=response.getheader("content-length") if self.command == "HEAD" else None)
        finally:
            upstream.close()

    def _send(self, status: int, headers: list, body: bytes, length: str | None = None) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", length if length is not None else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_DELETE = _answer


def test_reads_of_an_older_holders_objects_stop_trying_the_route_it_lacks(tmp_path):
    front_port = free_port()
    nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    front = None
    try:
        nodes.add("p1", "primary")
        old = nodes.new_node("old", "redundant", {"GATEWAY_ADVERTISE": f"http://127.0.0.1:{front_port}"}, None)
        front = OlderVersionFront(front_port, old.port)
        threading.Thread(target=front.serve_forever, daemon=True).start()
        nodes.nodes["old"] = old
        old.start()
        nodes.add("r2", "redundant")
        nodes.wait_known(3)

        nodes["p1"].client().create_bucket(Bucket="mixed")
        body = b"stored on the older node" * 100
        nodes["old"].client().put_object(Bucket="mixed", Key="face.jpg", Body=body)
        reader = nodes["r2"].client()
        for _ in range(20):
            assert reader.get_object(Bucket="mixed", Key="face.jpg")["Body"].read() == body
            assert reader.head_object(Bucket="mixed", Key="face.jpg")["ContentLength"] == len(body)

        # The first read found it the usual way; the second tried the route once and got the 405;
        # the others went the usual way at once.
        assert front.read_route_calls == 1, f"the S3 read route was tried {front.read_route_calls} times"
        assert passed(nodes["r2"], "declined") == 1
        with urllib.request.urlopen(nodes["r2"].endpoint + "/metrics", timeout=10) as response:
            assert "gateway_cluster_pass_through_reads_total" in response.read().decode()
        assert "no S3 read route" in nodes["r2"].log()
    finally:
        nodes.stop()
        if front is not None:
            front.shutdown()
            front.server_close()
