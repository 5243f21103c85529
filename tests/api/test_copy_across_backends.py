"""CopyObject between buckets on two backend instances (two cv-storage roots, as on two disks).

Within one backend the copy is the backend's own; across backends the gateway streams the
source into the target's put. Both must look the same to a client.
"""

from __future__ import annotations

import hashlib

import pytest
from botocore.exceptions import ClientError

from gateway.testing.server import GatewayProcess


@pytest.fixture(scope="module")
def two_disks(tmp_path_factory):
    base = tmp_path_factory.mktemp("two-disks")
    config = (f'default_backend = "hot"\n'
              f'[backends.hot]\ntype = "local"\nroot = "{base / "hot"}"\n'
              f'[backends.archive]\ntype = "local"\nroot = "{base / "archive"}"\n'
              f'[buckets]\ncold = "archive"\n')
    (base / "hot").mkdir()
    (base / "archive").mkdir()
    with GatewayProcess(base / "unused", config=config) as gateway:
        s3 = gateway.client()
        s3.create_bucket(Bucket="faces")
        s3.create_bucket(Bucket="cold")
        yield gateway, base


def test_copy_to_a_bucket_on_another_backend_keeps_body_and_metadata(two_disks):
    gateway, base = two_disks
    s3 = gateway.client()
    body = bytes(range(256)) * 8192  # 2 MiB: streamed through, not one read
    s3.put_object(Bucket="faces", Key="cam1/a.jpg", Body=body, ContentType="image/jpeg",
                  Metadata={"camera": "1"}, CacheControl="no-store")
    result = s3.copy_object(Bucket="cold", Key="2026/a.jpg", CopySource={"Bucket": "faces", "Key": "cam1/a.jpg"})
    assert result["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket="cold", Key="2026/a.jpg")
    assert got["Body"].read() == body
    assert (got["ContentType"], got["Metadata"], got["CacheControl"]) == ("image/jpeg", {"camera": "1"}, "no-store")
    # The copy lives on the archive disk, the source stays on the hot one.
    assert (base / "archive" / "cold" / "2026" / "a.jpg%obj").exists()
    assert (base / "hot" / "faces" / "cam1" / "a.jpg%obj").exists()
    assert not (base / "hot" / "cold").exists()


def test_copy_back_with_replaced_metadata(two_disks):
    gateway, _ = two_disks
    s3 = gateway.client()
    s3.put_object(Bucket="cold", Key="old.txt", Body=b"archived", Metadata={"v": "1"})
    s3.copy_object(Bucket="faces", Key="restored.txt", CopySource={"Bucket": "cold", "Key": "old.txt"},
                   MetadataDirective="REPLACE", ContentType="text/plain", Metadata={"v": "2"})
    head = s3.head_object(Bucket="faces", Key="restored.txt")
    assert (head["ContentType"], head["Metadata"]) == ("text/plain", {"v": "2"})
    assert s3.get_object(Bucket="faces", Key="restored.txt")["Body"].read() == b"archived"
    assert s3.head_object(Bucket="cold", Key="old.txt")["Metadata"] == {"v": "1"}


def test_copy_to_a_missing_bucket_on_another_backend_is_no_such_bucket(two_disks):
    """From the archive backend to a bucket the hot (default) backend does not have."""
    gateway, base = two_disks
    s3 = gateway.client()
    s3.put_object(Bucket="cold", Key="y", Body=b"y")
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket="nowhere", Key="y", CopySource={"Bucket": "cold", "Key": "y"})
    assert info.value.response["Error"]["Code"] == "NoSuchBucket"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert not (base / "hot" / "nowhere").exists()


def test_list_buckets_shows_only_buckets_requests_can_reach(two_disks):
    """A bucket made on the archive disk by another tool is not routed there (only "cold" is): it
    must not be listed, since every request for it goes to the default backend and answers 404."""
    gateway, base = two_disks
    (base / "archive" / "stray").mkdir()
    s3 = gateway.client()
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert "stray" not in names and {"faces", "cold"} <= set(names)
    with pytest.raises(ClientError) as info:
        s3.head_bucket(Bucket="stray")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
