"""Two and three real gateway processes on one shared directory, under concurrent mixed load.

Each gateway is its own `gateway serve` process with the sharedfs backend on
the same root and its own host_id (as if on its own server). Threads with
boto3 clients write, overwrite, read, list and delete through all of them at
once; afterwards every acknowledged write is checked on every gateway.

What must hold (issue 4, "Shared filesystem"):
- concurrent PUTs of one key end with one complete version: the bytes of one
  writer's payload, never a mix, and the last writer's (no acknowledged PUT
  started after the surviving one was acknowledged);
- a DELETE through one gateway is seen by the others at once;
- a listing on any gateway shows what the others wrote;
- a reader never sees a partial or mixed object while writers race;
- with the local backend's cache of small objects turned on, no gateway answers a version it
  cached after another gateway replaced it.

The same load runs over two smbnetfs mounts of one Samba share (two SMB
clients, as on two servers): the kernel here has no NFS or CIFS client.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
from botocore.exceptions import ClientError
from smbnetfs_mount import mount_for  # tests/plugins is on sys.path (no packages under tests/)

from gateway.testing.server import GatewayProcess

BUCKET = "shared"
HOT_KEYS = ["hot/a", "hot/b", "hot/c"]
# Sizes around the local backend's 1 MiB buffering limit, so both write paths race.
HOT_SIZES = [3_000, 45_000, 700_000, 1_300_000]
LOAD_SECONDS = 60  # a bound, not a target: the rounds normally finish well before


def shared_config(root: Path, host_id: str, **options) -> str:
    lines = ['default_backend = "shared"', "[backends.shared]", 'type = "sharedfs"',
             f'root = "{root}"', f'host_id = "{host_id}"']
    for name, value in options.items():
        lines.append(f'{name} = "{value}"' if isinstance(value, str) else f"{name} = {value}")
    return "\n".join(lines) + "\n"


def start_gateways(tmp_path: Path, roots: list[Path], **options) -> list[GatewayProcess]:
    """One gateway per root (the same directory, or several mounts of one share), started side by side."""
    gateways = [GatewayProcess(tmp_path / f"unused-data-dir-{number}",
                               config=shared_config(root, f"server-{number}", **options))
                for number, root in enumerate(roots, 1)]
    problems: list[BaseException] = []

    def start(gateway: GatewayProcess) -> None:
        try:
            gateway.start()
        except BaseException as exc:
            problems.append(exc)

    threads = [threading.Thread(target=start, args=(g,)) for g in gateways]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if problems or any(t.is_alive() for t in threads):
        for gateway in gateways:
            gateway.stop()
        raise RuntimeError(f"a gateway did not start: {problems[:1]}")
    return gateways


def payload(writer: int, round_: int, size: int) -> bytes:
    """Incompressible bytes unique to (writer, round): a mix of two payloads matches neither digest."""
    return random.Random(writer * 100_003 + round_).randbytes(size)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def status_of(exc: ClientError) -> int:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"]


def list_keys(client, prefix: str = "") -> dict[str, str]:
    """Every key under ``prefix`` with its ETag, through all pages."""
    found, token = {}, None
    while True:
        kwargs = {"Bucket": BUCKET, "Prefix": prefix, "MaxKeys": 50}
        if token:
            kwargs["ContinuationToken"] = token
        page = client.list_objects_v2(**kwargs)
        found.update({o["Key"]: o["ETag"].strip('"') for o in page.get("Contents", [])})
        if not page.get("IsTruncated"):
            return found
        token = page["NextContinuationToken"]


@dataclass
class Put:
    key: str
    digest: str
    started: float
    acked: float


@dataclass
class LoadRecord:
    """What the load threads did and saw, shared between them (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    hot_digests: dict[str, set] = field(default_factory=lambda: defaultdict(set))  # every payload ever sent
    hot_acked: list[Put] = field(default_factory=list)
    unique: dict[str, str] = field(default_factory=dict)  # acknowledged key -> digest
    deleted: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    reads: int = 0
    transient_missing: int = 0

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)


def writer_thread(number: int, clients: list, record: LoadRecord, rounds: int, deadline: float) -> None:
    gateways = len(clients)
    own = clients[number % gateways]  # each gateway takes writes
    other = clients[(number + 1) % gateways]
    third = clients[(number + 2) % gateways]
    mine: list[str] = []
    try:
        for round_ in range(rounds):
            if time.monotonic() > deadline:
                return
            # 1. Race the other writers on a hot key.
            key = HOT_KEYS[(number + round_) % len(HOT_KEYS)]
            data = payload(number, round_, HOT_SIZES[(number + round_) % len(HOT_SIZES)])
            digest = md5(data)
            with record.lock:
                record.hot_digests[key].add(digest)  # before sending: a reader may see it at once
            started = time.monotonic()
            response = own.put_object(Bucket=BUCKET, Key=key, Body=data)
            acked = time.monotonic()
            if response["ETag"].strip('"') != digest:
                record.fail(f"PUT {key} by writer {number} answered ETag {response['ETag']}, sent {digest}")
            with record.lock:
                record.hot_acked.append(Put(key, digest, started, acked))

            # 2. A key of its own: seen at once by another gateway, by GET and by listing.
            key = f"w{number}/r{round_:03d}"
            data = payload(number, 1000 + round_, 2_000 + 300 * round_)
            own.put_object(Bucket=BUCKET, Key=key, Body=data, Metadata={"writer": str(number)})
            with record.lock:
                record.unique[key] = md5(data)
            mine.append(key)
            body = other.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            if body != data:
                record.fail(f"{key} written through one gateway read back different through another")
            if key not in list_keys(third, f"w{number}/"):
                record.fail(f"{key} written through one gateway is missing from another gateway's listing")

            # 3. Now and then delete an older key: every other gateway sees it gone at once.
            if round_ % 3 == 2:
                victim = mine.pop(0)
                own.delete_object(Bucket=BUCKET, Key=victim)
                with record.lock:
                    record.deleted.add(victim)
                for client in clients:
                    try:
                        client.head_object(Bucket=BUCKET, Key=victim)
                        record.fail(f"{victim} deleted through one gateway still exists on another")
                    except ClientError as exc:
                        if status_of(exc) != 404:
                            record.fail(f"HEAD {victim} after its delete gave {status_of(exc)}, not 404")
                if victim in list_keys(other, f"w{number}/"):
                    record.fail(f"{victim} deleted through one gateway is still listed by another")
    except Exception as exc:  # any error on an acknowledged path is a failure of the test
        record.fail(f"writer {number}: {exc!r}")


def reader_thread(client, record: LoadRecord, stop: threading.Event, deadline: float,
                  missing_allowed: bool) -> None:
    rng = random.Random()
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            key = rng.choice(HOT_KEYS)
            try:
                response = client.get_object(Bucket=BUCKET, Key=key)
            except ClientError as exc:
                if status_of(exc) == 404 and missing_allowed:
                    with record.lock:
                        record.transient_missing += 1
                    continue
                record.fail(f"GET {key} during the load gave {status_of(exc)}: {exc}")
                continue
            body = response["Body"].read()
            digest = md5(body)
            with record.lock:
                record.reads += 1
                known = digest in record.hot_digests[key]
            if not known:
                record.fail(f"GET {key} returned {len(body)} bytes that are no writer's payload (a mix?)")
            if response["ETag"].strip('"') != digest:
                record.fail(f"GET {key}: ETag {response['ETag']} does not match the body's MD5 {digest}")
    except Exception as exc:
        record.fail(f"reader: {exc!r}")


def run_mixed_load(gateways: list[GatewayProcess], writers_per_gateway: int = 2, rounds: int = 9,
                   missing_allowed: bool = False, client_options: dict | None = None) -> LoadRecord:
    """Writers and readers through every gateway at once, bounded by ``rounds`` and LOAD_SECONDS.

    ``client_options``: botocore Config options for every client (default: no retries).
    """
    record = LoadRecord()
    client_options = client_options or {}
    setup = gateways[0].client(**client_options)
    setup.create_bucket(Bucket=BUCKET)
    for key in HOT_KEYS:  # a first version, so a reader never legitimately meets a missing hot key
        data = payload(999, HOT_KEYS.index(key), 1_000)
        record.hot_digests[key].add(md5(data))
        setup.put_object(Bucket=BUCKET, Key=key, Body=data)
    deadline = time.monotonic() + LOAD_SECONDS
    stop = threading.Event()
    # boto3 clients are made here, one per thread: creating them is not thread-safe.
    writer_count = writers_per_gateway * len(gateways)
    writers = [
        threading.Thread(target=writer_thread,
                         args=(n, [g.client(**client_options) for g in gateways], record, rounds, deadline))
        for n in range(writer_count)
    ]
    readers = [threading.Thread(target=reader_thread,
                                args=(g.client(**client_options), record, stop, deadline, missing_allowed))
               for g in gateways]
    for thread in writers + readers:
        thread.start()
    for thread in writers:
        thread.join(timeout=LOAD_SECONDS + 30)
    stop.set()
    for thread in readers:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in writers + readers), "load threads did not finish in time"
    return record


def check_everything_acknowledged(gateways: list[GatewayProcess], record: LoadRecord,
                                  client_options: dict | None = None) -> None:
    """After the load: every acknowledged write, on every gateway."""
    assert not record.failures, "\n".join(record.failures[:15])
    assert record.hot_acked and record.unique and record.deleted and record.reads, "the load did not run"
    clients = [g.client(**(client_options or {})) for g in gateways]
    # Concurrent PUTs of one key: one complete version, the same on every gateway, from the last writer.
    for key in HOT_KEYS:
        digests = {md5(c.get_object(Bucket=BUCKET, Key=key)["Body"].read()) for c in clients}
        assert len(digests) == 1, f"gateways disagree about {key}"
        final = digests.pop()
        acked = [p for p in record.hot_acked if p.key == key]
        survivor = [p for p in acked if p.digest == final]
        assert survivor, f"{key} holds a version no acknowledged PUT wrote"
        later = [p for p in acked if p.started > survivor[0].acked]
        assert not later, f"{key} kept a version although {len(later)} PUTs started after it was acknowledged"
    # Every acknowledged key of its own is there, whole, on every gateway; deleted ones are gone.
    expected = {k: d for k, d in record.unique.items() if k not in record.deleted}
    for client in clients:
        listed = list_keys(client, "w")
        assert listed == expected, (f"listing differs: missing {sorted(set(expected) - set(listed))[:5]}, "
                                    f"extra {sorted(set(listed) - set(expected))[:5]}")
        for key, digest in expected.items():
            assert md5(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()) == digest, key
        for key in record.deleted:
            with pytest.raises(ClientError) as caught:
                client.head_object(Bucket=BUCKET, Key=key)
            assert status_of(caught.value) == 404


def overwrite_cached_versions(gateways: list[GatewayProcess], rounds: int = 4) -> None:
    """Each round, every gateway reads (and caches) the hot keys; then another gateway overwrites
    them with a payload of the same size: every gateway must answer the new one at once."""
    clients = [g.client() for g in gateways]
    for round_ in range(rounds):
        payloads = {key: payload(500 + round_, n, 1_000) for n, key in enumerate(HOT_KEYS)}
        for key, data in payloads.items():
            clients[round_ % len(clients)].put_object(Bucket=BUCKET, Key=key, Body=data)
        time.sleep(0.2)  # old enough to be cached (readcache.SETTLE_SECONDS)
        for client in clients:
            for key, data in payloads.items():
                for _ in range(2):  # the first read fills the cache, the second is served from it
                    got = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                    assert got == data, f"round {round_}: {key} answered an older version"
    hits = sum(metric(g, "gateway_local_read_cache_hits_total") for g in gateways)
    assert hits >= rounds * len(HOT_KEYS) * len(gateways), f"the cache of small objects was used {hits} times"


def metric(gateway: GatewayProcess, name: str) -> float:
    """The sum of a metric's samples on a gateway's /metrics."""
    import urllib.request

    with urllib.request.urlopen(gateway.endpoint + "/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(name))


def temp_files(root: Path) -> list[str]:
    tmp = root / ".gateway" / "tmp"
    return [f"{host.name}/{name}" for host in tmp.iterdir() for name in os.listdir(host)] if tmp.exists() else []


@pytest.mark.parametrize(("count", "cache"), [(2, {}), (3, {}), (2, {"read_cache_bytes": 64 * 1024 * 1024})],
                         ids=["2", "3", "2-with-small-object-cache"])
def test_gateways_on_one_directory_under_mixed_load(tmp_path, count, cache):
    """With ``cache``: the cache of small objects turned on (off by default on sharedfs; safe on a
    local disk, where stat() is never answered from a client cache): no reader may meet a version
    it cached after another gateway replaced it."""
    root = tmp_path / "cv-storage"
    root.mkdir()
    gateways = start_gateways(tmp_path, [root] * count, **cache)
    try:
        record = run_mixed_load(gateways)
        check_everything_acknowledged(gateways, record)
        if cache:
            overwrite_cached_versions(gateways)
        assert temp_files(root) == [], "acknowledged writes leave no temp files"
        assert sorted(os.listdir(root / ".gateway" / "tmp")) == [f"server-{n}" for n in range(1, count + 1)]
    finally:
        for gateway in gateways:
            gateway.stop()


class _UnsignedPayload:
    """Stands in for a botocore Config: only the setting S3SigV4Auth looks at."""

    s3: ClassVar[dict] = {"payload_signing_enabled": False}


def open_partial_put(gateway: GatewayProcess, key: str, declared: int, sent: bytes) -> socket.socket:
    """Start a signed PUT that announces ``declared`` bytes, send only ``sent``, and keep it open."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="PUT", url=f"{gateway.endpoint}/{BUCKET}/{key}",
                         headers={"Content-Length": str(declared)})
    request.context["client_config"] = _UnsignedPayload()
    S3SigV4Auth(Credentials(gateway.access_key, gateway.secret_key), "s3", "us-east-1").add_auth(request)
    lines = [f"PUT /{BUCKET}/{key} HTTP/1.1", f"Host: {gateway.host}:{gateway.port}"]
    lines += [f"{name}: {value}" for name, value in request.headers.items() if name.lower() != "host"]
    sock = socket.create_connection((gateway.host, gateway.port), timeout=10)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + sent)
    return sock


def test_killed_gateway_leaves_no_partial_object_and_its_restart_cleans_only_its_temp_files(tmp_path):
    root = tmp_path / "cv-storage"
    root.mkdir()
    first, second = start_gateways(tmp_path, [root, root], stale_temp_seconds=0)
    in_flight = root / ".gateway" / "tmp" / "server-1"
    foreign = root / ".gateway" / "tmp" / "server-2" / "1.1-0-0badc0de"
    try:
        first.client().create_bucket(Bucket=BUCKET)
        second.client().put_object(Bucket=BUCKET, Key="big", Body=b"the old version")
        # 3 MiB of a 10 MiB body arrive, then server-1 dies with the upload in its temp file.
        sent = payload(7, 7, 3 * 1024 * 1024)
        sock = open_partial_put(first, "big", 10 * 1024 * 1024, sent)
        try:
            deadline = time.monotonic() + 20
            while not any(p.stat().st_size >= 2 * 1024 * 1024 for p in in_flight.iterdir()):
                assert time.monotonic() < deadline, "the upload never showed up as a temp file of server-1"
                time.sleep(0.01)
            first.kill()
        finally:
            sock.close()
        assert os.listdir(in_flight), "the killed upload left its temp file (cleaned at the next start)"
        # The other gateway serves the old version whole; the half upload is nowhere.
        client = second.client()
        assert client.get_object(Bucket=BUCKET, Key="big")["Body"].read() == b"the old version"
        assert list_keys(client) == {"big": md5(b"the old version")}
        # server-1 starts again: its dead process's temp file goes, server-2's stay.
        foreign.write_bytes(b"in flight on server-2 (a dead pid there means nothing here)")
        first.start()
        assert os.listdir(in_flight) == []
        assert foreign.exists()
        assert first.client().get_object(Bucket=BUCKET, Key="big")["Body"].read() == b"the old version"
    finally:
        first.stop()
        second.stop()


@pytest.fixture(scope="module")
def two_smbnetfs_mounts(smbd, tmp_path_factory):
    """Two independent smbnetfs mounts of the same share: two SMB clients, like two servers."""
    mounts = []
    try:
        for _ in range(2):
            mounts.append(mount_for(smbd, tmp_path_factory.mktemp("smbnetfs")))
        yield mounts
    finally:
        for mount in mounts:
            mount.stop()


def test_gateways_on_two_smbnetfs_mounts_of_one_share(tmp_path, two_smbnetfs_mounts):
    directory = f"multi-{uuid.uuid4().hex[:12]}"
    roots = [mount.share_dir / directory for mount in two_smbnetfs_mounts]
    roots[0].mkdir()
    assert roots[1].is_dir(), "the second mount sees the directory the first one made"
    gateways = start_gateways(tmp_path, roots, name_encoding="smbnetfs")
    try:
        # libsmbclient replaces a file by unlink + rename (SMBC_rename_ctx), so through smbnetfs a
        # reader on the other server may meet a hot key missing for a moment; never a mixed body.
        # And smbnetfs itself now and then fails every operation for 50 ms to a few seconds (its
        # log says "smb_conn_srv_stat: errno=22"; the files then give EIO): the gateway answers 503,
        # as for any failing mount, and the clients retry as boto3's standard mode does.
        retrying = {"retries": {"mode": "standard", "max_attempts": 10}}
        record = run_mixed_load(gateways, writers_per_gateway=2, rounds=6, missing_allowed=True,
                                client_options=retrying)
        print(f"smbnetfs load: {record.reads} hot reads, {record.transient_missing} met a missing hot key, "
              f"{len(record.hot_acked)} racing PUTs")
        check_everything_acknowledged(gateways, record, retrying)
        deadline = time.monotonic() + 10  # a write failed by such a moment has its temp file removed after it
        while temp_files(roots[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert temp_files(roots[0]) == []
    finally:
        for gateway in gateways:
            gateway.stop()
