"""The mount and other S3 clients at once, on the same keys (a prober's findings): real gateway, real
mount, boto3 writing while the mount moves or reads."""

from __future__ import annotations

import os
import random
import threading

from botocore.exceptions import ClientError


def test_a_directory_moved_while_another_client_writes_into_it_loses_no_write(fuse_gw, bucket, mount_factory):
    """mv of a directory copies every object, then deleted the old names unconditionally: a key
    overwritten by another client between its copy and that delete lost its acknowledged version
    (~80 of ~180 writes in a prober's runs). The old name is now deleted only while it holds the
    version that was copied; a newer one stays there."""
    s3 = fuse_gw.client()
    for n in range(150):
        s3.put_object(Bucket=bucket, Key=f"d/f{n:03d}", Body=b"first")
    mount = mount_factory()
    acknowledged: dict[str, bytes] = {}
    stop = threading.Event()

    def writer() -> None:
        writes = 0
        while not stop.is_set() and writes < 2000:  # bounded
            key = f"d/f{random.randrange(150):03d}"
            body = f"new-{writes}".encode()
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            acknowledged[key] = body
            writes += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        os.rename(mount.path / bucket / "d", mount.path / bucket / "e")
    finally:
        stop.set()
        thread.join(timeout=120)
    lost = []
    for key, body in acknowledged.items():
        moved = "e/" + key[2:]
        found = set()
        for name in (key, moved):
            try:
                found.add(s3.get_object(Bucket=bucket, Key=name)["Body"].read())
            except ClientError:
                pass
        if body not in found:
            lost.append((key, body))
    assert acknowledged and not lost, f"{len(lost)} of {len(acknowledged)} acknowledged writes lost: {lost[:5]}"
