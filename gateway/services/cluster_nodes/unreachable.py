"""The 503s of a cluster node: what could not be asked, named so that an operator knows which server to look at."""

from __future__ import annotations

from ... import errors

RETRY_AFTER = "5"  # seconds a client should wait when an object may be on an unreachable node

STORAGE_FAILED = ": its storage failed"  # how a 503 names a node whose own store answered that it failed


def servers_down(nodes: list[str]) -> str:
    """How a 503 says which servers could not say: "cannot be reached now (r1, r2)", or "cannot answer
    now (r1: its storage failed, r2)" when one answered that its store failed (PeerAsking._named)."""
    verb = "cannot answer" if any(n.endswith(STORAGE_FAILED) for n in nodes) else "cannot be reached"
    return f"{verb} now ({', '.join(sorted(nodes))})"


def bucket_unreachable_error(bucket: str, nodes: list[str], done: str) -> errors.GatewayError:
    """DeleteBucket's 503: a server that may hold the bucket could not be asked or failed; ``done``
    says what was changed. Names only the client's bucket (never the gateway's internal ones)."""
    which = servers_down(nodes) if nodes else "cannot be reached now"
    error = errors.NodeUnreachable(
        f"Bucket {bucket!r} cannot be deleted now: a server that may hold it {which}. {done}; retry later.")
    error.headers["Retry-After"] = RETRY_AFTER
    return error


def write_unreachable_error(what: str, peer: str) -> errors.GatewayError:
    """A write's 503: the node it was sent to could not be reached (or failed) before it answered."""
    error = errors.NodeUnreachable(
        f"{what} could not be completed because node {peer} cannot be reached now. "
        "Retry later.")
    error.headers["Retry-After"] = RETRY_AFTER
    return error


def upload_name(upload_id: str, key: str | None) -> str:
    """A multipart upload as a client knows it: its ID and key (never the record's internal name)."""
    return f"Multipart upload {upload_id!r}" + (f" of key {key!r}" if key is not None else "")


def upload_unreachable_error(upload_id: str, key: str | None, peers: list[str]) -> errors.GatewayError:
    """The node holding an upload (or one that may hold it) cannot be reached: never a final 404."""
    error = errors.NodeUnreachable(
        f"{upload_name(upload_id, key)} is held by a server that {servers_down(peers)}; it is kept there: "
        "retry later.")
    error.headers["Retry-After"] = RETRY_AFTER
    return error


def listing_unreachable_error(what: str, peers: list[str]) -> errors.GatewayError:
    """With strict_listings, a listing that would leave out what a server that cannot be asked holds."""
    error = errors.NodeUnreachable(
        f"{what} cannot be listed whole now: a server that may hold some of them {servers_down(peers)}. "
        "This cluster gives no partial listings (strict_listings); retry later.")
    error.headers["Retry-After"] = RETRY_AFTER
    return error


def catching_up_error() -> errors.GatewayError:
    """A read of this node's own copy just after it stood still (Cluster.reads_held)."""
    error = errors.ServiceUnavailable(
        "This server has just run again after standing still for longer than the peer timeout (a paused VM, "
        "a stopped process); it is applying the overwrites made meanwhile before it serves its own copies. "
        "Retry in a moment.")
    error.headers["Retry-After"] = "1"
    return error


def unreachable_error(what: str, peers: list[str]) -> errors.GatewayError:
    error = errors.NodeUnreachable(
        f"{what} may be on a server that {servers_down(peers)}; retry later.")
    error.headers["Retry-After"] = RETRY_AFTER
    return error
