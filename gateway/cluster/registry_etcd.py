"""The multi-host registry: etcd v3, spoken over its JSON gRPC gateway.

Why not a client library: the ``etcd3`` package is unmaintained and breaks
with current protobuf; the JSON gateway (``/v3/kv/range``, ``/v3/kv/put``,
``/v3/kv/txn``, ``/v3/kv/deleterange``, base64 keys and values) is part of
every etcd since 3.3 and needs nothing but aiohttp, which the gateway
already uses for peer calls.

Each node is one key, ``/cv-gateway/nodes/<node_id>``, holding the record as
JSON. The install order is the key's ``create_revision``: etcd hands those
out in order and keeps them while the key lives, so no counter is needed.
Heartbeats only write while the key exists (a compare on create_revision),
so a node removed by ``cluster leave`` is not silently re-added.

Retirements (gateway/cluster/retirements.py) are one key each,
``/cv-gateway/retire/<node_id, percent-encoded>/<bucket>/<key>``, holding
the version as JSON; writes compare the key's mod_revision with the one
read, so of two writers the newer version stays and an entry replaced while
its node applied it is not deleted.

Locks are keys under ``/cv-gateway/locks/`` attached to a lease of their
own: etcd deletes them when the lease runs out (a holder that died), taking
one is a put on condition that the key does not exist, and refreshing or
releasing one is a keep-alive or revocation of its lease (a lock another
process took in the releasing owner's name is deleted while its value is
still that owner).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import time
from typing import Any
from urllib.parse import parse_qsl, quote

import aiohttp

from .registry import NodeRecord, NotRegistered, Registry, RegistryError, Retirement

PREFIX = "/cv-gateway/nodes/"
RETIRE_PREFIX = "/cv-gateway/retire/"
LOCK_PREFIX = "/cv-gateway/locks/"
ID_KEY = "/cv-gateway/registry-id"
CAS_ATTEMPTS = 5  # compare-and-swap rounds before giving up on a key that keeps changing
TIMEOUT = aiohttp.ClientTimeout(total=5, sock_connect=2)


def registry_ca(url: str) -> str | None:
    """The CA file an etcds:// URL names (``?ca=/path/ca.pem``); ValueError for other parameters, a CA
    on plain etcd://, or a file that holds no certificate."""
    scheme, _, rest = url.partition("://")
    query = rest.partition("?")[2]
    if not query:
        return None
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(params) - {"ca"})
    if unknown:
        raise ValueError(f"registry {scheme}://...: unknown parameter {unknown[0]!r} (only ?ca=/path/ca.pem, for "
                         "etcds://)")
    if scheme != "etcds":
        raise ValueError(f"registry {scheme}://...: ?ca= is for etcds:// (HTTPS to etcd)")
    try:
        ssl.create_default_context(cafile=params["ca"])
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"registry {scheme}://...: ca={params['ca']} is not a readable PEM CA file "
                         f"({getattr(exc, 'strerror', None) or exc})") from None
    return params["ca"]


def _tls_handshake_failure(endpoint: str, exc: aiohttp.ClientConnectorError) -> str | None:
    """What to say when an https:// endpoint took the connection but its TLS handshake failed, or None.

    An etcd serving plain HTTP resets the connection at the ClientHello (another HTTP server answers
    something that is no TLS record): aiohttp said only "Cannot connect to host ... ssl:default [None]"."""
    if not endpoint.startswith("https://"):
        return None
    cause = exc.os_error
    if isinstance(exc, aiohttp.ClientSSLError) or isinstance(cause, ssl.SSLError):
        detail = str(cause) or type(cause).__name__
    elif isinstance(cause, (ConnectionResetError, ConnectionAbortedError)):
        detail = "the connection was reset"
    else:
        return None  # refused, no route, a name that does not resolve: not a TLS matter
    return f"the TLS handshake failed ({detail}): is this etcd serving TLS? use etcd:// for plain HTTP"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


def _retire_prefix(node_id: str) -> str:
    return f"{RETIRE_PREFIX}{quote(node_id, safe='')}/"


def _retire_key(node_id: str, item: Retirement) -> str:
    return _b64(_retire_prefix(node_id) + f"{item.bucket}/{item.key}")


def _absent(key: str) -> dict[str, str]:
    """The txn compare "this (base64) key does not exist": a put under it creates, never overwrites."""
    return {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def _under(prefix: str) -> dict[str, str]:
    """A range request's keys: every key starting with ``prefix``."""
    return {"key": _b64(prefix), "range_end": _prefix_end(prefix)}


class EtcdRegistry(Registry):
    """``etcd://host:port,host:port``; ``etcds://`` for HTTPS endpoints, verified against the system's CAs
    or, with ``?ca=/path/ca.pem``, against that file's (a private CA, the cluster's own)."""

    def __init__(self, url: str):
        super().__init__(url)
        scheme, rest = url.split("://", 1)
        rest, _, query = rest.partition("?")
        hosts = [h.strip() for h in rest.strip("/").split(",") if h.strip()]
        if not hosts:
            raise ValueError(f"registry {url!r}: name at least one endpoint, e.g. etcd://127.0.0.1:2379")
        http = "https" if scheme == "etcds" else "http"
        self.endpoints = [f"{http}://{h}" for h in hosts]
        self.ca_file = registry_ca(url)
        self._ssl = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True
        self._session: aiohttp.ClientSession | None = None
        self._records: dict[str, NodeRecord] = {}
        self._leases: dict[tuple[str, str], str] = {}  # (lock name, owner) -> the lease holding it

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the first endpoint that answers; the others are tried on connection errors.

        Each endpoint once per call, in the order of the moment the call began: the list is reordered
        by calls running meanwhile (one that answered goes first, one that did not last), and a call
        walking the list itself could meet a frozen member twice, waiting TIMEOUT each time (three
        members, one stopped: a heartbeat late by 15 s, a failover of a live primary)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT, connector=aiohttp.TCPConnector(ssl=self._ssl))
        failures = []
        unreachable = False  # an endpoint that refused or never answered: etcd not there, or a wrong URL
        for endpoint in list(self.endpoints):
            try:
                async with self._session.post(endpoint + path, json=body) as response:
                    data = await response.json(content_type=None)
                    if response.status != 200:
                        detail = data.get("error") if isinstance(data, dict) else None
                        failures.append(f"{endpoint}: HTTP {response.status} {detail or str(data)[:200]}")
                        continue
                    if not isinstance(data, dict):  # not etcd's JSON gateway (another service on that port?)
                        failures.append(f"{endpoint}: answered {str(data)[:100]!r}, not etcd's JSON")
                        continue
                    # Prefer the endpoint that answered next time.
                    if endpoint != self.endpoints[0]:
                        self.endpoints.remove(endpoint)
                        self.endpoints.insert(0, endpoint)
                    return data
            except TimeoutError:
                failures.append(f"{endpoint}: no answer within {TIMEOUT.total:.0f}s")
                unreachable = True
                self._ask_last(endpoint)
            except aiohttp.ClientConnectorCertificateError as exc:
                hint = ("" if self.ca_file else ": if etcd's certificate comes from a private CA (the cluster's), "
                        "name it in the URL, etcds://host:2379?ca=/path/ca.pem")
                failures.append(f"{endpoint}: its certificate is not trusted ({exc.certificate_error}){hint}")
                self._ask_last(endpoint)
            except aiohttp.ClientConnectorError as exc:
                tls_refused = _tls_handshake_failure(endpoint, exc)
                unreachable = unreachable or tls_refused is None
                failures.append(f"{endpoint}: {tls_refused or exc or type(exc).__name__}")
                self._ask_last(endpoint)
            except (aiohttp.ClientError, ValueError) as exc:
                failures.append(f"{endpoint}: {exc or type(exc).__name__}")
                self._ask_last(endpoint)
        hint = ("; check that etcd is running there and that --registry / GATEWAY_REGISTRY names its client URLs"
                if unreachable else "")
        raise RegistryError(f"etcd registry {self.url}: no endpoint answered {path}: " + "; ".join(failures) + hint)

    def _ask_last(self, endpoint: str) -> None:
        """An endpoint that did not answer is tried after the others by the calls that begin from now."""
        if endpoint in self.endpoints and endpoint != self.endpoints[-1]:
            self.endpoints.remove(endpoint)
            self.endpoints.append(endpoint)

    async def register(self, node_id: str, role: str, address: str) -> NodeRecord:
        key = _b64(PREFIX + node_id)
        for _ in range(CAS_ATTEMPTS):
            kvs = (await self._call("/v3/kv/range", {"key": key})).get("kvs") or []
            if kvs:
                # Not a heartbeat (Registry.register): the last heartbeat and the published info stay.
                try:
                    record = NodeRecord.from_json(json.loads(base64.b64decode(kvs[0]["value"])))
                except (KeyError, ValueError, TypeError, AttributeError) as exc:
                    raise RegistryError(f"etcd registry {self.url}: bad record under {PREFIX}: {exc}") from None
                record.role, record.address = role, address
                compare = {"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": kvs[0]["mod_revision"]}
            else:
                record = NodeRecord(node_id, role, address, 0, 0.0, {})  # never seen yet
                compare = _absent(key)
            data = await self._call("/v3/kv/txn", {"compare": [compare], "success": [
                {"request_put": {"key": key, "value": _b64(json.dumps(record.to_json()))}}]})
            if data.get("succeeded"):
                break
        else:
            raise RegistryError(f"etcd registry {self.url}: the record of {node_id} kept changing while it was "
                                f"registered ({CAS_ATTEMPTS} attempts)")
        self._records[node_id] = record
        stored = await self.get(node_id)
        if stored is None:
            raise RegistryError(f"etcd registry {self.url}: node {node_id} vanished right after registering")
        return stored

    async def restore(self, records: list[NodeRecord]) -> list[str]:
        # One put each, on condition that the key is absent, in the records' install order: the
        # install order is the key's create_revision, which a new etcd hands out afresh, but one
        # after the other the restored nodes keep their order among themselves (of two nodes
        # restoring at once, each creates a key only after the ones before it exist).
        added = []
        for record in sorted(records, key=lambda r: r.install_order):
            key = _b64(PREFIX + record.node_id)
            data = await self._call("/v3/kv/txn", {"compare": [_absent(key)], "success": [
                {"request_put": {"key": key, "value": _b64(json.dumps(record.to_json()))}}]})
            if data.get("succeeded"):
                added.append(record.node_id)
        return added

    async def heartbeat(self, node_id: str, info: dict[str, Any]) -> None:
        record = self._records.get(node_id) or await self.get(node_id)
        if record is None:
            raise NotRegistered(f"node {node_id} is not registered in {self.url} (removed by cluster leave?)")
        record.last_seen, record.info = time.time(), info
        key = _b64(PREFIX + node_id)
        data = await self._call("/v3/kv/txn", {
            "compare": [{"key": key, "target": "CREATE", "result": "GREATER", "create_revision": "0"}],
            "success": [{"request_put": {"key": key, "value": _b64(json.dumps(record.to_json()))}}],
        })
        if not data.get("succeeded"):
            self._records.pop(node_id, None)
            raise NotRegistered(f"node {node_id} is not registered in {self.url} (removed by cluster leave?)")

    async def nodes(self) -> list[NodeRecord]:
        data = await self._call("/v3/kv/range", _under(PREFIX))
        records = []
        kvs = data.get("kvs", [])
        if not isinstance(kvs, list):
            raise RegistryError(f"etcd registry {self.url}: the node list is not a list: {str(kvs)[:100]!r}")
        for kv in kvs:
            try:
                record = NodeRecord.from_json(json.loads(base64.b64decode(kv["value"])))
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                raise RegistryError(f"etcd registry {self.url}: bad record under {PREFIX}: {exc}") from None
            record.install_order = int(kv.get("create_revision", 0))
            records.append(record)
        return sorted(records, key=lambda r: r.install_order)

    async def remove(self, node_id: str) -> bool:
        self._records.pop(node_id, None)  # its retirements stay, for a rejoin with its old data
        data = await self._call("/v3/kv/deleterange", {"key": _b64(PREFIX + node_id)})
        return int(data.get("deleted", 0)) > 0

    async def add_retirement(self, node_id: str, item: Retirement, limit: int) -> bool:
        key = _retire_key(node_id, item)
        value = _b64(json.dumps(item.to_json()))
        for _ in range(CAS_ATTEMPTS):
            kvs = (await self._call("/v3/kv/range", {"key": key})).get("kvs") or []
            if kvs:
                if not item.newer_than(self._retirement(kvs[0])):
                    return True  # a newer (or the same) version is recorded already
                compare = {"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": kvs[0]["mod_revision"]}
            else:
                if await self._count(node_id) >= limit:
                    return False
                compare = _absent(key)
            data = await self._call("/v3/kv/txn", {"compare": [compare],
                                                   "success": [{"request_put": {"key": key, "value": value}}]})
            if data.get("succeeded"):
                return True
        raise RegistryError(f"etcd registry {self.url}: the retirement of {item.bucket}/{item.key} for {node_id} "
                            f"kept changing while it was written ({CAS_ATTEMPTS} attempts)")

    async def retirements(self, node_id: str, limit: int) -> list[Retirement]:
        data = await self._call("/v3/kv/range", {**_under(_retire_prefix(node_id)), "limit": str(limit)})
        return [self._retirement(kv) for kv in data.get("kvs") or []]

    async def drop_retirement(self, node_id: str, item: Retirement) -> None:
        key = _retire_key(node_id, item)
        await self._call("/v3/kv/txn", {
            "compare": [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": item.token}],
            "success": [{"request_delete_range": {"key": key}}],
        })

    async def retirement_counts(self, node_ids: list[str]) -> dict[str, int]:
        return {node: await self._count(node) for node in node_ids}

    async def _count(self, node_id: str) -> int:
        data = await self._call("/v3/kv/range", {**_under(_retire_prefix(node_id)), "count_only": True})
        return int(data.get("count", 0))

    def _retirement(self, kv: dict) -> Retirement:
        try:
            return Retirement.from_json(json.loads(base64.b64decode(kv["value"])), token=str(kv["mod_revision"]))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise RegistryError(f"etcd registry {self.url}: bad retirement under {RETIRE_PREFIX}: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        lease = (await self._call("/v3/lease/grant", {"TTL": str(max(1, round(ttl)))})).get("ID")
        if not lease:
            raise RegistryError(f"etcd registry {self.url}: no lease granted for the lock {name}")
        key = _b64(LOCK_PREFIX + name)
        data = await self._call("/v3/kv/txn", {
            "compare": [_absent(key)],
            "success": [{"request_put": {"key": key, "value": _b64(owner), "lease": lease}}],
        })
        if not data.get("succeeded"):
            await self._call("/v3/lease/revoke", {"ID": lease})
            return False
        self._leases[(name, owner)] = lease
        return True

    async def refresh_lock(self, name: str, owner: str, ttl: float) -> bool:
        lease = self._leases.get((name, owner))
        if lease is None:
            return False
        data = await self._call("/v3/lease/keepalive", {"ID": lease})
        result = data.get("result", data)  # the gateway streams keep-alive answers: one {"result": ...} here
        return int(result.get("TTL", 0) or 0) > 0

    async def release_lock(self, name: str, owner: str) -> None:
        lease = self._leases.pop((name, owner), None)
        if lease is not None:
            await self._call("/v3/lease/revoke", {"ID": lease})
            return
        # Taken in owner's name under another process's lease (the handover lock, which `gateway
        # cluster promote` takes for the node it chose), or this process's before a restart: delete
        # it while it is still owner's, as SQLite does. Left alone, it lasted until that lease ran out
        # (--wait, 60 s), and the voters replace no dead primary while a handover is under way.
        key = _b64(LOCK_PREFIX + name)
        await self._call("/v3/kv/txn", {
            "compare": [{"key": key, "target": "VALUE", "result": "EQUAL", "value": _b64(owner)}],
            "success": [{"request_delete_range": {"key": key}}],
        })

    async def lock_holder(self, name: str) -> str | None:
        kvs = (await self._call("/v3/kv/range", {"key": _b64(LOCK_PREFIX + name)})).get("kvs") or []
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None  # etcd drops it when its lease ends

    async def set_role(self, node_id: str, role: str) -> bool:
        key = _b64(PREFIX + node_id)
        kvs = (await self._call("/v3/kv/range", {"key": key})).get("kvs") or []
        if not kvs:
            return False
        record = NodeRecord.from_json(json.loads(base64.b64decode(kvs[0]["value"])))
        record.role = role
        # Only over the version read: a heartbeat written meanwhile wins, and the next round retries.
        data = await self._call("/v3/kv/txn", {
            "compare": [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": kvs[0]["mod_revision"]}],
            "success": [{"request_put": {"key": key, "value": _b64(json.dumps(record.to_json()))}}],
        })
        if data.get("succeeded") and node_id in self._records:
            self._records[node_id].role = role
        return bool(data.get("succeeded"))

    async def identity(self) -> str | None:
        key = _b64(ID_KEY)
        kvs = (await self._call("/v3/kv/range", {"key": key})).get("kvs") or []
        if kvs:  # the usual case: one read (nodes compare it on every reload of the node list)
            return base64.b64decode(kvs[0]["value"]).decode()
        # Made by the first node that asks (a put on condition that the key is absent), then read.
        await self._call("/v3/kv/txn", {
            "compare": [_absent(key)],
            "success": [{"request_put": {"key": key, "value": _b64(os.urandom(16).hex())}}],
        })
        kvs = (await self._call("/v3/kv/range", {"key": key})).get("kvs") or []
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None
