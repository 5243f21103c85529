"""`gateway cluster repair`: walk every bucket through this node and retire the copies of keys that an
overwrite could not retire (docs/cluster.md, "Repair").

The node does the work (its peer route /_cluster/v1/repair, services/cluster_nodes/repair.py): it
lists a page of the bucket on every storing node, reads again the copies of each key listed in
different versions, and retires the older ones as an overwrite does. This tool asks for one page
after the other, with the node's own cluster credentials, and says what was found.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from .peers import node_connection
from .progress import Progress, plural
from .stores import node_name

PAGE = 1000
PAGE_TIMEOUT = 300.0  # a page may retire up to PAGE copies, each a request to every storing node


class RepairError(Exception):
    """The walk could not go on (the node did not answer, refused, or failed); the message says why."""


@dataclass
class RepairResult:
    keys: int = 0
    buckets: int = 0
    dropped: list[str] = field(default_factory=list)  # "bucket/key: older copy on r2 dropped (newest on r1)"
    skipped: list[str] = field(default_factory=list)  # differing copies left for another run
    unreachable: set[str] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        """Every storing node was listed and every differing key settled."""
        return not self.skipped and not self.unreachable


class NodeRoute:
    """Signed requests to this node's peer routes, as another node of the cluster sends them."""

    def __init__(self, settings):
        from gateway.cluster.membership import client_ssl_context
        from gateway.cluster.peer_auth import PeerSigner
        from gateway.cluster.settings_check import advertised_url

        if not settings.registry:
            raise RepairError("this is no cluster node: give the settings the node's `gateway serve` runs with "
                              "(--role, --registry, --advertise, GATEWAY_CLUSTER_SECRET, the TLS files)")
        # (A cluster node's settings without a cluster secret are refused when they are read.)
        self.address = advertised_url(settings)
        self.signer = PeerSigner(settings.cluster_secret, node_name(settings))
        self.connection = node_connection(self.address, client_ssl_context(settings), PAGE_TIMEOUT)

    def call(self, method: str, path: str, query: dict | None = None) -> dict:
        from gateway.cluster import wire

        target = wire.PREFIX + path + ("?" + urlencode(query, quote_via=quote) if query else "")
        for attempt in (1, 2):  # a kept-alive connection the node closed meanwhile: once more (a page is idempotent)
            try:
                self.connection.request(method, target, headers=self.signer.headers(method, target))
                response = self.connection.getresponse()
                body = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self.connection.close()  # the next request connects afresh
                if attempt == 2 or isinstance(exc, (ConnectionRefusedError, TimeoutError)):
                    raise RepairError(f"the node at {self.address} did not answer ({exc}): is its `gateway serve` "
                                      "running, and are these its settings?") from None
        if response.status != 200:
            reason = body.decode(errors="replace").strip() or response.reason
            raise RepairError(f"the node at {self.address} answered {response.status}: {reason}")
        return json.loads(body)

    def close(self) -> None:
        self.connection.close()


def repair(settings, buckets: tuple[str, ...] = (), dry_run: bool = False, quiet: bool = False,
           stream=None, page_size: int = PAGE) -> RepairResult:
    """Walk ``buckets`` (every bucket when empty) through this node; RepairError when it cannot go on."""
    route = NodeRoute(settings)
    result = RepairResult()
    progress = Progress("repair" + (" (dry run)" if dry_run else ""), stream=stream, quiet=quiet, unit="keys",
                        count_bytes=False)
    try:
        known = route.call("GET", "/repair")["buckets"]
        missing = [b for b in buckets if b not in known]
        if missing:
            raise RepairError(f"no bucket {', '.join(map(repr, missing))} in the cluster (it has: "
                              f"{', '.join(known) or 'none'})")
        for bucket in buckets or known:
            result.buckets += 1
            start_after = ""
            while True:
                query = {"start-after": start_after, "max-keys": str(page_size)}
                if dry_run:
                    query["dry-run"] = "1"
                page = route.call("POST", f"/repair/{quote(bucket, safe='')}", query)
                result.keys += page["listed"]
                progress.add(page["listed"])
                result.unreachable.update(page["unreachable"])
                for copy in page["copies"]:
                    _report(bucket, copy, dry_run, result, progress)
                if not page["next"]:
                    break
                start_after = page["next"]
    except RepairError:
        progress.interrupt()
        raise
    finally:
        route.close()
    progress.done(summary(result, dry_run))
    return result


def _report(bucket: str, copy: dict, dry_run: bool, result: RepairResult, progress: Progress) -> None:
    name = f"{bucket}/{copy['key']}"
    if copy.get("skipped"):
        result.skipped.append(name)
        progress.note(f"{name}: copies differ, but one could not be read now; left for the next run")
        return
    older = ", ".join(copy["older_on"])
    result.dropped.append(name)
    verb = "would drop" if dry_run else "dropped"
    progress.note(f"{name}: {verb} the older copy on {older} (the newest is on {copy['newest_on']})")


def summary(result: RepairResult, dry_run: bool) -> str:
    text = (f"{plural(result.keys, 'key')} in {plural(result.buckets, 'bucket')} checked; "
            f"{plural(len(result.dropped), 'key')} with an older copy " + ("found" if dry_run else "repaired"))
    if result.skipped:
        text += f"; {plural(len(result.skipped), 'key')} left for the next run (a copy could not be read)"
    if result.unreachable:
        text += (f"; not checked on {', '.join(sorted(result.unreachable))} (could not be reached): run it again "
                 "when every storing node is up")
    return text
