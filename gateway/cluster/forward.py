"""Forward: a plain read that this node passes through to the peer known to hold the object.

The relay's usual way (services/cluster_nodes/asking.py, ``_find``) asks a peer's object
route for the object and its info, then builds the S3 answer here: a task, a
future, a coroutine chain resumed, the answer rebuilt. For the read it sees
most, a GET or HEAD of an object the location cache places on a peer, the
front end does less: it sends the client's read to that peer's S3 read route
(``/_cluster/v1/s3/<bucket>/<key>``, cluster-signed; the client was
authenticated here), which answers it exactly as an S3 read of its own
storage, and the answer goes back to the client as it arrives
(gateway/api/pass_through.py). docs/cluster.md, "Pass-through reads".

Only an answer that settles the read is passed through (FINAL_STATUSES): a
404 (the cache was stale), a refused signature, a 5xx or no answer at all
sends the read the usual way, which asks every node and answers 503 when one
could not be asked.
"""

from __future__ import annotations

from . import wire

S3_READ_ROUTE = wire.PREFIX + "/s3"  # + the S3 path: /bucket/key, percent-encoded as the client sent it
# The request headers an object read's answer depends on (s3/objects.py read_object).
FORWARDED_HEADERS = ("range", "if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since",
                     "x-amz-checksum-mode")
# The object, part of it, or a precondition's or range's verdict on it: the answer to the client.
FINAL_STATUSES = frozenset({200, 206, 304, 412, 416})


class Forward:
    """Returned by ClusterNode.get/head(..., forward=True) instead of relaying in the usual way
    (returned, not raised: an exception through the read's coroutines cost ~1 µs a read).

    S3App.answer_read returns it (with ``req`` set) as its answer, and the front end passes the
    read through (gateway/api/pass_through.py), or, when it cannot, asks answer_read again
    without ``forward``.
    """

    __slots__ = ("address", "node", "peer", "req")

    def __init__(self, node, peer: str, address: str):
        self.node = node  # the ClusterNode: its client, health, balancer and location cache
        self.peer = peer
        self.address = address
        self.req = None  # the S3Request, set by S3App.answer_read

    def request(self) -> tuple[str, str, str]:
        """(method, target, header lines) of the peer request: the client's read, signed for the
        cluster. The lines end in CRLF each; the values forwarded came through the front end's
        parser, which refuses a CR or LF in a header, so they cannot split the request."""
        req = self.req
        target = S3_READ_ROUTE + req.raw_path
        if req.query_string:
            target += "?" + req.query_string
        lines = self.node.client.signer.header_lines(req.method, target)
        given = req.headers
        for name in FORWARDED_HEADERS:
            if name in given:
                lines += f"{name}: {given[name]}\r\n"
        return req.method, target, lines
