"""ListObjectsV2 with metadata=true (MinIO's extension): <UserMetadata> per object, only from backends
that list metadata (Capabilities.listing_metadata); docs/s3-compatibility.md, "Listing metadata"."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import quote

import pytest

# Fixtures imported from s3_helpers: bucket (unique per test), gateway (one per backend).
from s3_helpers import NS, gateway_on_each_backend, raw_request, unique_bucket  # noqa: F401

from gateway.testing.server import GatewayProcess


def listed(gateway, bucket: str, query: str) -> dict[str, ET.Element]:
    """Key -> <Contents> of a raw ListObjectsV2 with ``query`` (list-type=2 added)."""
    response = raw_request(gateway, "GET", f"/{bucket}", query="&".join(filter(None, ["list-type=2", query])))
    assert response.status == 200, response.body
    return {c.findtext(f"{NS}Key"): c for c in response.xml().iter(f"{NS}Contents")}


def user_metadata(contents: ET.Element) -> dict[str, str] | None:
    node = contents.find(f"{NS}UserMetadata")
    if node is None:
        return None
    return {child.tag.removeprefix(NS): child.text or "" for child in node}


def test_metadata_true_adds_user_metadata_as_minio_does(gateway, s3, bucket):
    s3.put_object(Bucket=bucket, Key="dir/clip.mp4", Body=b"x" * 5000, ContentType="video/mp4",
                  Metadata={"mtime": "1577836800.123456789", "mode": "100640", "camera_id": "cam-3"})
    s3.put_object(Bucket=bucket, Key="plain", Body=b"p")
    contents = listed(gateway, bucket, "metadata=true")
    assert user_metadata(contents["dir/clip.mp4"]) == {
        "content-type": "video/mp4", "X-Amz-Meta-Mtime": "1577836800.123456789", "X-Amz-Meta-Mode": "100640",
        "X-Amz-Meta-Camera_id": "cam-3"}
    # An object without user metadata has an element with its content type alone: "none", not "unknown".
    assert user_metadata(contents["plain"]) == {"content-type": "binary/octet-stream"}
    # The rest of each entry is as without the parameter.
    for key, entry in listed(gateway, bucket, "").items():
        assert user_metadata(entry) is None
        assert [c.tag for c in contents[key] if c.tag != f"{NS}UserMetadata"] == [c.tag for c in entry]


def test_metadata_only_when_asked_and_only_in_v2(gateway, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"k", Metadata={"a": "1"})
    for query in ("", "metadata=false", "metadata=TRUE&fetch-owner=true"):
        assert user_metadata(listed(gateway, bucket, query)["k"]) is None, query
    v1 = raw_request(gateway, "GET", f"/{bucket}", query="metadata=true")
    assert v1.status == 200 and v1.xml().find(f"{NS}Contents/{NS}UserMetadata") is None
    # boto3 and other S3 clients read the answer as usual.
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["k"]


def test_values_are_escaped_and_keys_alone_url_encoded(gateway, s3, bucket):
    s3.put_object(Bucket=bucket, Key="a b&c<d>.txt", Body=b"x",
                  Metadata={"note": "<b>&amp; \"quoted\" 'single'"}, ContentType="text/plain; charset=a&b")
    contents = listed(gateway, bucket, "metadata=true&encoding-type=url")
    assert list(contents) == ["a%20b%26c%3Cd%3E.txt"]
    assert user_metadata(contents["a%20b%26c%3Cd%3E.txt"]) == {
        "content-type": "text/plain; charset=a&b", "X-Amz-Meta-Note": "<b>&amp; \"quoted\" 'single'"}


def test_a_name_xml_cannot_hold_leaves_the_object_without_user_metadata(gateway, bucket):
    """x-amz-meta-a+b is a valid header (token) but <X-Amz-Meta-A+b> is no XML: the object is listed
    without <UserMetadata> (unknown: the client asks HEAD), never with the other names alone."""
    put = raw_request(gateway, "PUT", f"/{bucket}/odd", body=b"o",
                      headers={"x-amz-meta-a+b": "1", "x-amz-meta-mtime": "5"})
    assert put.status == 200, put.body
    put = raw_request(gateway, "PUT", f"/{bucket}/even", body=b"e", headers={"x-amz-meta-a.b-c_d": "2"})
    assert put.status == 200, put.body
    contents = listed(gateway, bucket, "metadata=true")
    assert user_metadata(contents["odd"]) is None
    assert user_metadata(contents["even"]) == {"content-type": "binary/octet-stream", "X-Amz-Meta-A.b-C_d": "2"}


def test_metadata_with_delimiter_and_pages(gateway, s3, bucket):
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"d/{i}", Body=b"x", Metadata={"n": str(i)})
    s3.put_object(Bucket=bucket, Key="d/sub/x", Body=b"x")
    query = "list-type=2&metadata=true&prefix=d%2F&delimiter=%2F"
    root = raw_request(gateway, "GET", f"/{bucket}", query=query + "&max-keys=3").xml()
    assert [user_metadata(c)["X-Amz-Meta-N"] for c in root.iter(f"{NS}Contents")] == ["0", "1", "2"]
    token = quote(root.findtext(f"{NS}NextContinuationToken"), safe="")
    root = raw_request(gateway, "GET", f"/{bucket}", query=f"{query}&continuation-token={token}").xml()
    assert [user_metadata(c)["X-Amz-Meta-N"] for c in root.iter(f"{NS}Contents")] == ["3", "4"]
    assert [p.text for p in root.iter(f"{NS}Prefix")][-1] == "d/sub/"


@pytest.fixture(scope="module")
def s3_backed(tmp_path_factory):
    """A gateway whose bucket is on the s3 backend (whose listings carry no metadata), stored in a
    second gateway: the same as on any S3 store (moto, AWS)."""
    base = tmp_path_factory.mktemp("s3-backed")
    with GatewayProcess(base / "remote") as remote:
        config = (f'default_backend = "remote"\n\n[backends.remote]\ntype = "s3"\nendpoint_url = "{remote.endpoint}"\n'
                  f'region = "us-east-1"\naccess_key_id = "{remote.access_key}"\n'
                  f'secret_access_key = "{remote.secret_key}"\nbucket_prefix = "front-"\n')
        with GatewayProcess(base / "unused", config=config) as front:
            yield front


def test_backend_without_listing_metadata_ignores_the_parameter(s3_backed):
    s3 = s3_backed.client()
    s3.create_bucket(Bucket="remote-listing")
    s3.put_object(Bucket="remote-listing", Key="k", Body=b"k", Metadata={"mtime": "5"})
    contents = listed(s3_backed, "remote-listing", "metadata=true")
    assert list(contents) == ["k"] and user_metadata(contents["k"]) is None
    assert s3.head_object(Bucket="remote-listing", Key="k")["Metadata"] == {"mtime": "5"}
