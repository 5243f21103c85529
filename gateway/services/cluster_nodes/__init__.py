"""What a cluster node does with object requests, decided by its role in one place: :func:`node_backend`.

The S3 handlers call ``service.backend_for(bucket)`` as on a stand-alone
node; in a cluster that returns one of these wrappers, which implement the
Backend contract by combining this node's storage with its peers':

- primary:   local storage; new objects are placed on itself or a redundant
             node (power of two choices); misses are relayed.
- redundant: local storage; misses are relayed to the other storing nodes.
- proxy:     no storage; every request goes to the storing nodes.

Peers are asked on their /_cluster/v1 routes, which serve only their own
storage and never relay again, so no request can loop.

The modules, by what the node does:

- ``asking.py``: how a node asks its peers (one, the first that has an
  object, or all) and looks at its own store;
- ``node.py``: ClusterNode, the role-independent part: object reads, writes,
  deletes, listings, and retiring the older copies of an overwritten key;
- ``uploads.py``: multipart uploads, continued on the node that holds them;
- ``buckets.py``: buckets, created and deleted on every storing node;
- ``roles.py``: what differs by role (StoringNode, PrimaryNode, ProxyNode);
- ``unreachable.py``: the 503s that name what could not be asked.
"""

from __future__ import annotations

from ...backend import Backend
from ...cluster.membership import Cluster
from .node import ClusterNode
from .roles import PrimaryNode, ProxyNode, StoringNode
from .unreachable import unreachable_error, write_unreachable_error

__all__ = ["ClusterNode", "PrimaryNode", "ProxyNode", "StoringNode", "node_backend", "unreachable_error",
           "write_unreachable_error"]


def node_backend(role: str, local: Backend | None, cluster: Cluster, name: str = "") -> Backend:
    """The Backend the S3 API uses on a node with ``role`` for the backend instance ``name``."""
    if role == "proxy":
        return ProxyNode(cluster, name)
    if local is None:
        raise ValueError(f"a {role} node needs local storage")
    if role == "primary":
        return PrimaryNode(local, cluster)
    return StoringNode(local, cluster)
