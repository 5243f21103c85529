"""`gateway cluster ...`: join, status, leave, tls init (see docs/cluster.md)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import click

from .cluster.election import HANDOVER, LEASE, voters
from .cluster.registry import ROLES, NodeRecord, RegistryError, open_registry
from .cluster.settings_check import check_registry_url


def _registry_option(func):
    return click.option("--registry", envvar="GATEWAY_REGISTRY", required=True,
                        help="Registry URL: sqlite:///path.db, etcd://host:port,... or etcds://host:port,...?ca=CA.pem "
                             "(GATEWAY_REGISTRY).")(func)


def _run(coroutine_factory):
    """Run registry work; registry errors become a clear message and exit code 1."""
    try:
        return asyncio.run(coroutine_factory())
    except (RegistryError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None


async def _with_registry(url: str, work, create: bool = False):
    """Run ``work(registry)``; without ``create``, a registry that does not exist yet is an error."""
    check_registry_url(url)  # a bad endpoint named now, not as an obscure client error on the first request
    registry = open_registry(url)
    if not create and registry.absent():
        raise RegistryError(registry.absent())
    try:
        return await work(registry)
    finally:
        await registry.close()


@click.group()
def cluster() -> None:
    """Manage the cluster: nodes in the registry, status, certificates."""


@cluster.command()
@_registry_option
@click.option("--advertise", envvar="GATEWAY_ADVERTISE", required=True,
              help="URL peers reach the node at (GATEWAY_ADVERTISE).")
@click.option("--role", type=click.Choice(ROLES), help="primary, redundant or proxy (default: primary for the "
              "first node, redundant after).")
@click.option("--node-id", envvar="GATEWAY_NODE_ID", help="Node name (GATEWAY_NODE_ID; default: host:port of "
              "--advertise).")
def join(registry, advertise, role, node_id) -> None:
    """Add a node to the registry (`gateway serve` with the same settings also joins by itself)."""
    from urllib.parse import urlsplit

    from .config import is_http_url

    if not is_http_url(advertise):
        raise click.BadParameter(f"{advertise!r} is not a URL like https://10.0.0.2:8086", param_hint="--advertise")
    if urlsplit(advertise).hostname in ("0.0.0.0", "::"):  # as gateway serve refuses it (config.py)
        raise click.BadParameter(f"{advertise!r} names no machine (it is where a server listens: every interface): "
                                 "give the address peers reach the node at, e.g. https://10.0.0.2:8086",
                                 param_hint="--advertise")
    node_id = node_id or urlsplit(advertise).netloc
    if not node_id.strip():
        raise click.BadParameter("must not be empty", param_hint="--node-id")

    address = advertise.rstrip("/")

    async def work(reg):
        created = False
        if reg.absent():
            # Only the first node of a new cluster (its primary) creates the registry; a missing
            # directory, or a redundant node or proxy joining no cluster at all, is a typo in --registry.
            why = reg.cannot_create()
            if why:
                raise click.BadParameter(why, param_hint="--registry")
            if role not in (None, "primary"):
                raise click.BadParameter(
                    f"there is no registry at {registry} yet: a new cluster starts with its primary, so join that "
                    f"first (or this node without --role). If the cluster exists, check --registry "
                    "(GATEWAY_REGISTRY) for a typo", param_hint="--registry")
            created = True
        nodes = await reg.nodes()
        existing = next((n for n in nodes if n.node_id == node_id), None)
        taken = next((n for n in nodes if n.node_id != node_id and _same_address(n.address, address)), None)
        if taken is not None:
            raise click.BadParameter(
                f"{address} is the address of node {taken.node_id} already: two records for one gateway would make "
                f"peers ask it for {node_id}'s objects and {taken.node_id}'s alike. If this is that node, join it as "
                f"--node-id {taken.node_id}; if {taken.node_id} is gone, remove it first with `gateway cluster leave "
                f"--node-id {taken.node_id}`", param_hint="--advertise")
        try:
            holder = await reg.lock_holder(LEASE)
        except NotImplementedError:  # a registry plugin without locks: no failover
            holder = None
        listed = next((n.node_id for n in nodes if n.role == "primary" and n.node_id != node_id), None)
        primary = listed or (holder if holder not in (None, node_id) else None)
        chosen = role or (existing.role if existing else ("redundant" if primary else "primary"))
        if chosen == "primary" and primary and not (existing and existing.role == "primary"):
            why = " and ".join(w for w, yes in (("listed primary", listed == primary),
                                                 ("holds the primary lease", holder == primary)) if yes)
            raise click.BadParameter(
                f"node {primary} is the primary already ({why}), and a cluster has one. Join {node_id} as "
                f"redundant (--role redundant), start it, then hand it the role with `gateway cluster promote "
                f"{node_id}`; if {primary} is gone for good, remove it first with `gateway cluster leave --node-id "
                f"{primary} --force`", param_hint="--role")
        return await reg.register(node_id, chosen, address), created

    record, created = _run(lambda: _with_registry(registry, work, create=True))
    if created:
        click.echo(f"created a new registry at {registry}")
    line = f"node {record.node_id} joined as {record.role} (install order {record.install_order}) at {record.address}"
    if not record.ever_seen:
        line += "; `gateway cluster status` shows it as \"joined, not seen yet\" until its gateway runs"
    click.echo(line)


def _same_address(a: str, b: str) -> bool:
    """Whether two advertised URLs name one gateway (scheme, host and port; case and a default port aside)."""
    from urllib.parse import urlsplit

    def key(url: str):
        parts = urlsplit(url.rstrip("/"))
        try:
            port = parts.port
        except ValueError:
            port = None
        scheme = parts.scheme.lower()
        return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)

    return key(a) == key(b)


@cluster.command()
@_registry_option
@click.option("--node-id", envvar="GATEWAY_NODE_ID", required=True, help="The node to remove (GATEWAY_NODE_ID).")
@click.option("--force", is_flag=True, help="Remove the primary, or a node that holds objects, too (the cluster is "
              "then without a primary; the node's objects are found through no node).")
def leave(registry, node_id, force) -> None:
    """Remove a node from the registry (stop its gateway first, or it is re-added when it restarts).

    Refused without --force for the primary and for a storing node that holds objects (by its last
    published count, whose age the refusal gives): no other node has them, so once it left they read
    as 404 (not found) through every node. A node on shared storage (sharedfs) whose share other
    storing nodes serve is not refused: its objects stay readable through them.
    """
    from .cluster.membership import STATS_EVERY  # here: the module pulls in the peer client

    if not node_id.strip():
        raise click.BadParameter("must not be empty", param_hint="--node-id")

    async def work(reg):
        nodes = await reg.nodes()
        node = next((n for n in nodes if n.node_id == node_id), None)
        try:
            holder = await reg.lock_holder(LEASE)
        except NotImplementedError:
            holder = None
        others = [n for n in nodes if n.node_id != node_id and n.stores_objects]
        if not force and others and node is not None and (node.role == "primary" or holder == node_id):
            raise ValueError(f"{node_id} is the primary: removing it would leave the cluster without one (failover "
                             "only replaces a primary that is listed). Hand its role over first with `gateway cluster "
                             f"promote NODE`, then remove it; or pass --force")
        held = node.info.get("objects") if node is not None and node.stores_objects else None
        notes, warnings = [], []
        if held is not None and node.info.get("shared_storage") is True:
            # Its files are the share's: the other storing nodes on the share serve them as their own.
            sharing = [n.node_id for n in others if n.info.get("shared_storage") is True]
            if sharing:
                held = None
                down = [n.node_id for n in others if n.node_id in sharing and not n.heartbeat_fresh()]
                notes.append(f"its objects stay on the shared storage, served by {', '.join(sharing)}"
                             + (f" (down now: {', '.join(down)}; they serve them again once running)" if down else ""))
        counted = _count_age(node) if held is not None else None
        if not force and held:
            # Peers stop asking a node that left: its objects would be answered 404, as if deleted.
            raise ValueError(f"{node_id} holds {held} objects by its last count ({counted[0]}; a node counts at "
                             f"most every {STATS_EVERY / 60:.0f} min, so objects written since are not in it): no "
                             "other node has them, and once it left they would read as not found (404) through "
                             "every node. Keep it until they are copied elsewhere; or pass --force (the files stay "
                             "on its disk)")
        if held == 0 and counted[1] is not None and counted[1] > STALE_COUNT:
            warnings.append(f"warning: {node_id} held no objects by its last count, {counted[0]}: objects written "
                            "to it since then read as not found (404) through every node now. Its files stay on its "
                            f"disk; `gateway cluster join --registry {registry} --node-id {node_id} --advertise "
                            f"{node.address} --role {node.role}` adds it back")
        if node is not None and node.heartbeat_fresh():
            warnings.append(f"warning: {node_id} is running (its last heartbeat {node.age():.0f} s ago): it now "
                            "refuses writes and reports not ready (/readyz), and is back in the cluster when it "
                            "restarts. Stop its gateway (e.g. systemctl stop cv-gateway on it)")
        return await reg.remove(node_id), notes, warnings

    removed, notes, warnings = _run(lambda: _with_registry(registry, work))
    if not removed:
        click.echo(f"error: node {node_id} is not in the registry", err=True)
        raise SystemExit(1)
    click.echo(f"node {node_id} left the cluster" + "".join(f"; {n}" for n in notes))
    for warning in warnings:
        click.echo(warning, err=True)


STALE_COUNT = 60.0  # seconds: a count of no objects older than this is worth a warning when the node leaves


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _count_age(node: NodeRecord, now: float | None = None) -> tuple[str, float | None]:
    """How old a node's published object count is: ("counted 4 min ago", seconds), from the time it
    published with the count; a node of a version that did not publish it: its last heartbeat's age."""
    from .cluster.membership import STATS_EVERY

    now = time.time() if now is None else now
    counted_at = node.info.get("objects_counted_at")
    if isinstance(counted_at, (int, float)) and counted_at > 0:
        return f"counted {_ago(now - counted_at)}", now - counted_at
    if node.ever_seen:
        return (f"published {_ago(node.age(now))}, counted up to {STATS_EVERY / 60:.0f} min before",
                node.age(now))
    return "never counted", None


def status_rows(nodes: list[NodeRecord], now: float | None = None) -> list[dict]:
    """One dict per node: what `cluster status --json` prints."""
    now = time.time() if now is None else now
    # The distribution: what every node (primary, proxies, the node itself) sent to each node,
    # summed over the views they published with their heartbeats.
    placed: dict[str, int] = {}
    reads: dict[str, int] = {}
    for other in nodes:
        for target, counts in other.info.get("balance", {}).items():
            placed[target] = placed.get(target, 0) + int(counts.get("placed", 0))
            reads[target] = reads.get(target, 0) + int(counts.get("reads", 0))
    rows = []
    for node in nodes:
        fresh = node.heartbeat_fresh(now)
        # Peers that currently try this node last (their own view, published with their heartbeat).
        limited_by = sorted(
            other.node_id for other in nodes
            if other.node_id != node.node_id and other.heartbeat_fresh(now)
            and not other.info.get("peers", {}).get(node.node_id, {}).get("healthy", True)
        )
        rows.append({
            "node_id": node.node_id, "role": node.role, "address": node.address,
            "install_order": node.install_order, "healthy": fresh and not limited_by,
            "heartbeat_fresh": fresh, "deprioritized_by": limited_by,
            # None: registered (`cluster join`) but its gateway never heartbeated.
            "last_seen": node.last_seen if node.ever_seen else None,
            "last_seen_ago": round(node.age(now), 1) if node.ever_seen else None,
            "objects": node.info.get("objects"), "objects_counted_at": node.info.get("objects_counted_at"),
            "free_bytes": node.info.get("free_bytes"),
            # Whether every store of the node is shared storage (None: not published yet).
            "shared_storage": node.info.get("shared_storage"),
            # Backends whose store has not answered since the node started (no writes placed there for them).
            "storage_pending": node.info.get("storage_pending") or [],
            # Backends whose store was found full lately (no writes placed there for them a while).
            "storage_full": node.info.get("storage_full") or [],
            # Backends whose store failed lately (EIO, read-only, unreachable): no writes placed there a while.
            "storage_failed": node.info.get("storage_failed") or [],
            "placed": placed.get(node.node_id, 0), "reads": reads.get(node.node_id, 0),
            "balance": node.info.get("balance", {}),
        })
    return rows


def _size(value) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


@cluster.command()
@_registry_option
@click.option("--wait", default=60.0, show_default=True, help="Seconds to wait for the node to take over.")
@click.argument("node_id")
def promote(registry, wait, node_id) -> None:
    """Make NODE_ID the primary, a planned handover (docs/cluster.md, "Failover").

    The primary gives its role up on its next heartbeat and NODE_ID, a running redundant node,
    takes it on its own. Every node keeps serving meanwhile.
    """
    async def work(reg):
        nodes = {n.node_id: n for n in await reg.nodes()}
        node = nodes.get(node_id)
        if node is None:
            raise ValueError(f"there is no node {node_id!r} in {registry} (nodes: {', '.join(nodes) or 'none'})")
        if node.role == "primary":
            click.echo(f"{node_id} is the primary already")
            return
        if node.role != "redundant":
            raise ValueError(f"{node_id} is a {node.role} node: only a redundant node, which stores objects, can be primary")
        if not node.ever_seen:
            raise ValueError(f"{node_id} has never run (joined, not seen yet): start it first")
        if not node.heartbeat_fresh():
            raise ValueError(f"{node_id} is down (last heartbeat {node.age():.0f} s ago): start it first")
        if not await reg.acquire_lock(HANDOVER, node_id, wait):
            raise ValueError(f"a handover to {await reg.lock_holder(HANDOVER)} is under way: wait for it to finish")
        try:
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if await reg.lock_holder(LEASE) == node_id:
                    click.echo(f"{node_id} is the primary now")
                    return
                await asyncio.sleep(0.2)
            current = await reg.lock_holder(LEASE)
            raise ValueError(f"{node_id} did not take over within {wait:g} s (primary lease held by "
                             f"{current or 'nobody'}): check that the primary and {node_id} are running and can "
                             "reach the registry, and their logs")
        finally:
            await reg.release_lock(HANDOVER, node_id)

    _run(lambda: _with_registry(registry, work))


@cluster.command()
@_registry_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def status(registry, as_json) -> None:
    """Show every node: role, address, health, last heartbeat, objects, free space, request distribution.

    PLACED and READS: object PUTs stored on the node and GET/HEAD requests it
    answered, counted by the nodes that received them (the primary's and the
    proxies' load balancing, a node's own local hits), as of their last heartbeat.
    """
    async def read(reg):
        try:
            holder = await reg.lock_holder(LEASE)
        except NotImplementedError:  # a registry plugin without locks: no failover
            holder = None
        return await reg.nodes(), holder

    nodes, lease_holder = _run(lambda: _with_registry(registry, read))
    rows = status_rows(nodes)
    primary = next((n for n in nodes if n.role == "primary"), None)
    # Whether failover is on is each node's setting, published with its heartbeat: the primary's says.
    failover_on = primary is not None and primary.info.get("failover", True)
    voting = voters(nodes, primary.node_id) if failover_on else []
    for row in rows:
        row["voter"] = bool(voting) and (row["node_id"] == primary.node_id or row["node_id"] in voting)
        row["primary_lease"] = row["node_id"] == lease_holder
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    if not rows:
        # Running nodes register again within a heartbeat when their registry was reset.
        click.echo(f"no nodes are registered in {registry}: check --registry (GATEWAY_REGISTRY); running nodes "
                   "register again within a heartbeat if the registry was replaced", err=True)
        sys.exit(1)
    if as_json:
        return
    table = []
    for row in rows:
        if row["last_seen"] is None:
            health = "joined, not seen yet"  # `cluster join` registered it; its gateway never heartbeated
        elif not row["heartbeat_fresh"]:
            health = "down (no heartbeat)"
        elif row["deprioritized_by"]:
            health = "slow: " + ",".join(row["deprioritized_by"])
        elif row["storage_full"]:
            health = "full: " + ",".join(row["storage_full"])
        elif row["storage_pending"] or row["storage_failed"]:
            health = "store down: " + ",".join(sorted({*row["storage_pending"], *row["storage_failed"]}))
        else:
            health = "ok"
        seen = f"{row['last_seen_ago']:.0f}s ago" if row["last_seen_ago"] is not None else "never"
        objects = "-" if row["objects"] is None else str(row["objects"])
        table.append((row["node_id"], row["role"], row["address"], health, seen, objects, _size(row["free_bytes"]),
                      str(row["placed"]), str(row["reads"])))
    _print_table(("NODE", "ROLE", "ADDRESS", "HEALTH", "LAST SEEN", "OBJECTS", "FREE", "PLACED", "READS"), table,
                 right_from=5)
    for row in rows:
        if row["role"] == "primary" and row["balance"]:
            spread = ", ".join(f"{node} {v['placed']} placed/{v['reads']} reads"
                               for node, v in row["balance"].items())
            click.echo(f"\nprimary {row['node_id']} sent: {spread}")
    if voting:
        click.echo(f"\nfailover: voters {primary.node_id}, {', '.join(voting)}; primary lease held by "
                   f"{lease_holder or 'nobody'}")
    elif primary is None:
        click.echo("\nno node is primary: failover has none to replace (`gateway cluster promote NODE` makes one)")
    elif not failover_on:
        click.echo("\nfailover: off (failover = false on the primary)")
    else:
        click.echo("\nfailover: off (it needs two redundant nodes)")


def _print_table(headers: tuple[str, ...], rows: list[tuple[str, ...]], right_from: int) -> None:
    """Columns as wide as their widest cell (node ids are host:port, IPv6 addresses, long host names:
    fixed widths pushed every later column out of line); the columns from ``right_from`` on are numbers,
    right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]

    def line(cells) -> str:
        return " ".join(cell.rjust(width) if i >= right_from else cell.ljust(width)
                        for i, (cell, width) in enumerate(zip(cells, widths))).rstrip()

    for cells in (headers, *rows):
        click.echo(line(cells))


@cluster.group()
def tls() -> None:
    """Certificates for HTTPS between nodes."""


@tls.command("init")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
              help="Where to write ca.pem, ca-key.pem, <node>.pem, <node>-key.pem and cluster-secret.")
@click.option("--node", "nodes", multiple=True, required=True,
              help="NAME=HOST[,HOST...]: a node and the names/IPs it is reached at (repeat per node).")
def tls_init_command(directory, nodes) -> None:
    """Create the cluster CA (kept if present), a certificate per node and a cluster secret."""
    from .cluster.tls import tls_init

    parsed = {}
    for spec in nodes:
        name, sep, hosts = spec.partition("=")
        if not sep or not name or not hosts:
            raise click.BadParameter(f"{spec!r}: expected NAME=HOST[,HOST...], e.g. node1=10.0.0.1,node1.lan",
                                     param_hint="--node")
        if name in parsed:  # the second would silently replace the first
            raise click.BadParameter(f"node {name!r} is given twice: name all its hosts in one --node "
                                     f"{name}=HOST,HOST", param_hint="--node")
        parsed[name] = [h.strip() for h in hosts.split(",") if h.strip()]
    try:
        written = tls_init(Path(directory), parsed)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write to {directory}: {exc.strerror or exc}") from None
    click.echo(f"CA: {Path(directory) / 'ca.pem'}  cluster secret: {Path(directory) / 'cluster-secret'}")
    for name, (cert, key) in written.items():
        click.echo(f"{name}: --tls-cert {cert} --tls-key {key} --tls-ca {Path(directory) / 'ca.pem'}")
