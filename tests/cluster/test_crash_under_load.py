"""Writes, overwrites, deletes and reads through every node while a redundant node is killed (kill -9)
and restarted: no write that was answered is lost or read wrong, during or after, and every node
ends with the same objects. Real gateway processes (1 primary + 2 redundant + 1 proxy on SQLite),
boto3 clients in threads; the load is bounded in operations and in time."""

from __future__ import annotations

import os
import random
import threading
import time

from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from .conftest import NODES, start_cluster, wait_for

WRITERS = 4
KEYS_PER_WRITER = 30
MAX_OPERATIONS = 800  # per writer; the phases below stop it sooner
UNKNOWN = "unknown"  # a write whose answer was an error: it may or may not have been applied


def test_no_answered_write_is_lost_or_read_wrong_while_a_node_is_killed_and_restarted(tmp_path):
    cluster = start_cluster(tmp_path / "c", f"sqlite:///{tmp_path}/registry.db")
    stop = threading.Event()
    lock = threading.Lock()
    expected: dict[str, bytes | None | str] = {}  # key -> body of its last answered write, None: deleted
    wrong: list[str] = []
    operations = []

    def writer(number: int) -> None:
        rnd = random.Random(number)
        clients = {name: cluster[name].client(connect_timeout=5, read_timeout=15) for name in NODES}
        keys = [f"w{number}/k{n}" for n in range(KEYS_PER_WRITER)]  # each key is this thread's alone
        for _ in range(MAX_OPERATIONS):
            if stop.is_set():
                break
            key, node = rnd.choice(keys), rnd.choice(NODES)
            body = os.urandom(rnd.choice((200, 20_000, 48_000)))
            try:
                if rnd.random() < 0.1:
                    clients[node].delete_object(Bucket="crash", Key=key)
                    body = None
                else:
                    clients[node].put_object(Bucket="crash", Key=key, Body=body)
                outcome = body
            except (ClientError, EndpointConnectionError, ConnectionClosedError, ReadTimeoutError):
                outcome = UNKNOWN
            with lock:
                expected[key] = outcome
                operations.append(outcome is not UNKNOWN)
            if outcome is UNKNOWN or rnd.random() > 0.4:
                continue
            reader = rnd.choice(NODES)  # read back through any node, at once
            try:
                got = clients[reader].get_object(Bucket="crash", Key=key)["Body"].read()
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "NoSuchKey" and outcome is not None:
                    with lock:
                        wrong.append(f"{key} through {reader}: NoSuchKey after its put was answered")
                continue  # a 503 (the object may be on the killed node) is an honest answer
            except (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError):
                continue  # the killed node itself
            if got != outcome:
                with lock:
                    wrong.append(f"{key} through {reader}: {'a body' if outcome is None else 'another body'}")

    try:
        cluster["p1"].client().create_bucket(Bucket="crash")
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        cluster["r1"].kill()  # kill -9, writes in flight
        time.sleep(4)
        cluster.restart("r1")
        time.sleep(3)
        stop.set()
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive(), "a writer did not stop"
        assert not wrong, wrong[:10]
        assert sum(operations) > 100 and not all(operations), "the load ran, and the kill was felt"

        clients = {name: cluster[name].client() for name in NODES}
        settled = {key: body for key, body in expected.items() if body is not UNKNOWN}

        def read(name: str, key: str) -> bytes | None:
            try:
                return clients[name].get_object(Bucket="crash", Key=key)["Body"].read()
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "NoSuchKey":
                    return None
                raise

        def listed(name: str) -> set[str]:
            pages = clients[name].get_paginator("list_objects_v2").paginate(Bucket="crash", PaginationConfig={
                "PageSize": 37})
            return {o["Key"] for page in pages for o in page.get("Contents", [])}

        wait_for(lambda: all(cluster.admin("p1")["peers"][n]["healthy"] for n in ("r1", "r2")), 15,
                 "r1 to be healthy again")
        for name in NODES:
            for key, body in sorted(settled.items()):
                assert read(name, key) == body, (name, key, "deleted" if body is None else len(body))
            keys = listed(name)
            assert {k for k, b in settled.items() if b is not None} <= keys, name
            assert not keys & {k for k, b in settled.items() if b is None}, name
        assert len({frozenset(listed(name)) for name in NODES}) == 1, "every node lists the same objects"
    finally:
        stop.set()
        cluster.stop()
