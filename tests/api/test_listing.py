"""ListObjects v1 and v2: prefix, delimiter, pagination, start-after, encoding-type=url."""

from __future__ import annotations

from urllib.parse import unquote_plus

import pytest
from botocore.exceptions import ClientError

# Fixtures imported from s3_helpers: bucket (unique per test), gateway (one per backend).
from s3_helpers import NS, error_code, gateway_on_each_backend, raw_request, unique_bucket  # noqa: F401

KEYS = sorted([
    "cam1/2024/01/a.jpg", "cam1/2024/01/b.jpg", "cam1/2024/02/c.jpg", "cam1/index.json", "cam2/x.jpg",
    "cam2/y.jpg", "cam10/z.jpg", "readme", "readme.txt", "z/deep/er/still/file", "cam1-flat",
], key=lambda k: k.encode())


@pytest.fixture(scope="module")
def listing(gateway):
    s3 = gateway.client()
    name = "listing-fixture"
    s3.create_bucket(Bucket=name)
    for key in KEYS:
        s3.put_object(Bucket=name, Key=key, Body=key.encode())
    return name


def _all_keys_v2(s3, bucket, **kwargs):
    keys, prefixes = [], []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, **kwargs):
        keys += [o["Key"] for o in page.get("Contents", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    return keys, prefixes


def _all_keys_v1(s3, bucket, **kwargs):
    keys, prefixes = [], []
    for page in s3.get_paginator("list_objects").paginate(Bucket=bucket, **kwargs):
        keys += [o["Key"] for o in page.get("Contents", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    return keys, prefixes


def test_full_listing_in_byte_order(s3, listing):
    response = s3.list_objects_v2(Bucket=listing)
    assert [o["Key"] for o in response["Contents"]] == KEYS
    assert response["KeyCount"] == len(KEYS)
    assert response["IsTruncated"] is False
    first = response["Contents"][0]
    assert first["Size"] == len(first["Key"])
    assert first["ETag"].startswith('"') and first["StorageClass"] == "STANDARD"
    assert [o["Key"] for o in s3.list_objects(Bucket=listing)["Contents"]] == KEYS


def test_prefix(s3, listing):
    response = s3.list_objects_v2(Bucket=listing, Prefix="cam1/2024/")
    assert [o["Key"] for o in response["Contents"]] == [k for k in KEYS if k.startswith("cam1/2024/")]
    assert response["Prefix"] == "cam1/2024/"
    response = s3.list_objects_v2(Bucket=listing, Prefix="readme")
    assert [o["Key"] for o in response["Contents"]] == ["readme", "readme.txt"]
    assert s3.list_objects_v2(Bucket=listing, Prefix="nothing-here")["KeyCount"] == 0


def test_delimiter_common_prefixes(s3, listing):
    for list_call in (s3.list_objects_v2, s3.list_objects):
        response = list_call(Bucket=listing, Delimiter="/")
        assert [o["Key"] for o in response["Contents"]] == ["cam1-flat", "readme", "readme.txt"]
        assert [p["Prefix"] for p in response["CommonPrefixes"]] == ["cam1/", "cam10/", "cam2/", "z/"]
        assert response["Delimiter"] == "/"
    response = s3.list_objects_v2(Bucket=listing, Delimiter="/", Prefix="cam1/")
    assert [o["Key"] for o in response["Contents"]] == ["cam1/index.json"]
    assert [p["Prefix"] for p in response["CommonPrefixes"]] == ["cam1/2024/"]
    response = s3.list_objects_v2(Bucket=listing, Delimiter="/", Prefix="cam1")  # a prefix that is no "directory"
    assert [o["Key"] for o in response["Contents"]] == ["cam1-flat"]
    assert [p["Prefix"] for p in response["CommonPrefixes"]] == ["cam1/", "cam10/"]
    response = s3.list_objects_v2(Bucket=listing, Delimiter="/", Prefix="cam1/2024/")
    assert [p["Prefix"] for p in response["CommonPrefixes"]] == ["cam1/2024/01/", "cam1/2024/02/"]
    assert "Contents" not in response


def test_non_slash_delimiter(s3, listing):
    response = s3.list_objects_v2(Bucket=listing, Delimiter=".")
    prefixes = [p["Prefix"] for p in response["CommonPrefixes"]]
    assert prefixes == ["cam1/2024/01/a.", "cam1/2024/01/b.", "cam1/2024/02/c.", "cam1/index.", "cam10/z.",
                        "cam2/x.", "cam2/y.", "readme."]
    assert [o["Key"] for o in response["Contents"]] == ["cam1-flat", "readme", "z/deep/er/still/file"]


@pytest.mark.parametrize("page_size", [1, 2, 3, 5, 1000])
@pytest.mark.parametrize("delimiter", ["", "/"])
def test_pagination_reproduces_full_listing(s3, listing, page_size, delimiter):
    expected = s3.list_objects_v2(Bucket=listing, Delimiter=delimiter)
    expected_keys = [o["Key"] for o in expected.get("Contents", [])]
    expected_prefixes = [p["Prefix"] for p in expected.get("CommonPrefixes", [])]
    config = {"PageSize": page_size}
    assert _all_keys_v2(s3, listing, Delimiter=delimiter, PaginationConfig=config) == \
        (expected_keys, expected_prefixes)
    assert _all_keys_v1(s3, listing, Delimiter=delimiter, PaginationConfig=config) == \
        (expected_keys, expected_prefixes)


def test_page_fields(s3, listing):
    first = s3.list_objects_v2(Bucket=listing, MaxKeys=3)
    assert first["IsTruncated"] is True
    assert first["KeyCount"] == 3
    assert first["MaxKeys"] == 3
    second = s3.list_objects_v2(Bucket=listing, MaxKeys=3, ContinuationToken=first["NextContinuationToken"])
    assert second["ContinuationToken"] == first["NextContinuationToken"]
    assert [o["Key"] for o in second["Contents"]] == KEYS[3:6]
    v1 = s3.list_objects(Bucket=listing, MaxKeys=2, Delimiter="/")
    assert v1["IsTruncated"] is True
    assert v1["NextMarker"] == "cam1/"
    v1_next = s3.list_objects(Bucket=listing, MaxKeys=2, Delimiter="/", Marker=v1["NextMarker"])
    assert v1_next["Marker"] == "cam1/"
    assert [p["Prefix"] for p in v1_next["CommonPrefixes"]] == ["cam10/", "cam2/"]


def test_start_after_and_marker(s3, listing):
    response = s3.list_objects_v2(Bucket=listing, StartAfter="cam2/x.jpg")
    assert [o["Key"] for o in response["Contents"]] == KEYS[KEYS.index("cam2/x.jpg") + 1:]
    assert response["StartAfter"] == "cam2/x.jpg"
    response = s3.list_objects(Bucket=listing, Marker="readme")
    assert [o["Key"] for o in response["Contents"]] == KEYS[KEYS.index("readme") + 1:]
    # A start-after that is not a key, and one inside a rolled-up prefix.
    response = s3.list_objects_v2(Bucket=listing, StartAfter="cam1/2024/015")
    assert response["Contents"][0]["Key"] == "cam1/2024/02/c.jpg"
    response = s3.list_objects_v2(Bucket=listing, StartAfter="cam1/2024/01/a.jpg", Delimiter="/")
    assert [p["Prefix"] for p in response["CommonPrefixes"]] == ["cam10/", "cam2/", "z/"]


def test_max_keys_zero_and_invalid(gateway, s3, listing):
    response = s3.list_objects_v2(Bucket=listing, MaxKeys=0)
    assert response["KeyCount"] == 0
    raw = raw_request(gateway, "GET", f"/{listing}", query="list-type=2&max-keys=-1")
    assert raw.status == 400
    assert raw.code == "InvalidArgument"


def test_bad_continuation_token(s3, listing):
    with pytest.raises(ClientError) as info:
        s3.list_objects_v2(Bucket=listing, ContinuationToken="!!not-a-token!!")
    assert error_code(info.value) == "InvalidArgument"


def test_owner_only_when_asked_in_v2(s3, listing):
    assert "Owner" not in s3.list_objects_v2(Bucket=listing, MaxKeys=1)["Contents"][0]
    assert "Owner" in s3.list_objects_v2(Bucket=listing, MaxKeys=1, FetchOwner=True)["Contents"][0]
    assert "Owner" in s3.list_objects(Bucket=listing, MaxKeys=1)["Contents"][0]


AWKWARD = ["ctl\x01char", "sp ace/x", "plus+/y", "amp&lt;<>", "pct%41", "ünï/ç", "new\nline", "tab\tkey"]


@pytest.fixture
def awkward(s3, bucket):
    for key in AWKWARD:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    return bucket


def test_encoding_type_url_raw(gateway, awkward):
    """The XML carries the keys percent-encoded; decoding gives them back exactly."""
    for query in ("encoding-type=url", "list-type=2&encoding-type=url"):
        response = raw_request(gateway, "GET", f"/{awkward}", query=query)
        assert response.status == 200
        root = response.xml()
        assert root.findtext(f"{NS}EncodingType") == "url"
        raw_keys = [node.findtext(f"{NS}Key") for node in root.iter(f"{NS}Contents")]
        assert all(ch not in k for k in raw_keys for ch in "\x01\n\t <>&"), raw_keys
        assert sorted(unquote_plus(k) for k in raw_keys) == sorted(AWKWARD)
    response = raw_request(gateway, "GET", f"/{awkward}", query="list-type=2&encoding-type=url&delimiter=%2F")
    prefixes = [node.findtext(f"{NS}Prefix") for node in response.xml().iter(f"{NS}CommonPrefixes")]
    assert sorted(unquote_plus(p) for p in prefixes) == sorted(["sp ace/", "plus+/", "ünï/"])


def test_encoding_type_url_boto3(s3, awkward):
    """boto3 asks for encoding-type=url by itself and decodes the answer."""
    keys, prefixes = _all_keys_v2(s3, awkward, Delimiter="/", PaginationConfig={"PageSize": 2})
    assert sorted(keys + prefixes) == sorted(["ctl\x01char", "amp&lt;<>", "pct%41", "new\nline", "tab\tkey",
                                              "sp ace/", "plus+/", "ünï/"])
    keys, _ = _all_keys_v1(s3, awkward, PaginationConfig={"PageSize": 3})
    assert keys == sorted(AWKWARD, key=lambda k: k.encode())
    response = s3.list_objects_v2(Bucket=awkward, Prefix="sp ace/", StartAfter="sp ace/")
    assert [o["Key"] for o in response["Contents"]] == ["sp ace/x"]


def test_unknown_encoding_type(gateway, listing):
    response = raw_request(gateway, "GET", f"/{listing}", query="encoding-type=base64")
    assert response.status == 400
    assert response.code == "InvalidArgument"
