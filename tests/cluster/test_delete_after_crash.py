"""A DELETE answered 204 stays done when a node that was down comes back with a copy: a writer that
published its copy and was killed (kill -9) before the older copy elsewhere was dropped leaves two
copies; a DELETE while it is down found the other one (204), and the node, back, served its own
again: for good, since nothing compares a deleted key's copies. Real processes, SIGSTOP and kill -9."""

from __future__ import annotations

import threading
import time

import pytest
from botocore.exceptions import ClientError

from .conftest import NODES, start_cluster


def test_a_delete_is_not_undone_by_a_node_that_was_down_with_a_copy(tmp_path):
    cluster = start_cluster(tmp_path / "c", f"sqlite:///{tmp_path}/registry.db")
    try:
        p1 = cluster["p1"].client()
        p1.create_bucket(Bucket="crash")
        cluster["r1"].client().put_object(Bucket="crash", Key="k", Body=b"v1")
        cluster["r1"].pause()  # r2's PUT cannot drop r1's copy: r2 waits for r1's answer
        failed = []

        def put_v2() -> None:
            try:
                cluster["r2"].client(read_timeout=30).put_object(Bucket="crash", Key="k", Body=b"v2")
            except Exception as exc:  # noqa: BLE001 - the writer died: botocore's or urllib3's connection error
                failed.append(exc)

        writer = threading.Thread(target=put_v2)
        writer.start()
        deadline = time.monotonic() + 10
        while not (cluster["r2"].data_dir / "crash" / "k%obj").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (cluster["r2"].data_dir / "crash" / "k%obj").exists(), "r2 did not store v2"
        cluster["r2"].kill()  # published v2, died before r1 dropped v1
        writer.join(30)
        assert failed, "the PUT through r2 was answered"
        cluster["r1"].kill()  # the retirement request waiting in its socket goes with it
        cluster.restart("r1")
        p1.delete_object(Bucket="crash", Key="k")  # r1's copy found and deleted: 204
        cluster.restart("r2")
        for name in NODES:
            for _ in range(3):
                with pytest.raises(ClientError) as info:
                    cluster[name].client().get_object(Bucket="crash", Key="k")
                assert info.value.response["Error"]["Code"] == "NoSuchKey", name
        assert p1.list_objects_v2(Bucket="crash").get("KeyCount") == 0
        assert not (cluster["r2"].data_dir / "crash" / "k%obj").exists()
    finally:
        cluster.stop()
