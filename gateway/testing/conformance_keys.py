"""Conformance tests for keys and listings (part of BackendConformance).

Listings are checked against :func:`reference_list`, a deliberately naive
model of S3's ListObjectsV2 over a plain list of keys.
"""

from __future__ import annotations

import pytest

from gateway.backend import ObjectMeta

from .backend_io import get_bytes, list_all, put_bytes


def _fill_to(pattern: str, size: int) -> str:
    """``pattern`` repeated and cut to exactly ``size`` UTF-8 bytes (pattern is ASCII or 2-byte chars)."""
    text = pattern * (size // len(pattern.encode()) + 1)
    while len(text.encode()) > size:
        text = text[:-1]
    return text + "x" * (size - len(text.encode()))


# Keys that have broken object stores: separators, escapes, dot segments, lengths.
TRICKY_KEYS = [
    "a", "a/b", "a/b/c", "with space", "two  spaces ", " leading space", "per%cent", "%", "%%", "%25", "%2F",
    "a%2Fb", "..%2F..%2Fescape", "%2e%2e/x", "plus+sign", "a+b=c&d", "ünïcödé/日本語/😀", "\uff5e",
    "trailing/",
    "a//b", "//", "/leading", "./x", "../x", "a/./b", "a/../b", "a/..", ".", "..", "...", "x/../../../up",
    "%obj", "a%obj", "a%obj/b", "%h", "a%h0123", "%_", "%name", "%bucket.json", "%tmp", ".gateway", ".multipart",
    "tab\tand\nnewline", "back\\slash", "..\\..\\windows", "C:\\x", "~tilde", "*?<>|:\"'", "#hash?query",
    "\x01\x7f", "etc/passwd", "/etc/passwd",
    _fill_to("k", 1024),  # the longest S3 key, one segment
    _fill_to("é", 1024),  # long multi-byte segment: the name is cut and hashed
    _fill_to("%", 1024),  # long segment that triples when escaped
    _fill_to("dir/", 1024),  # 256 levels deep, trailing "/"
    _fill_to("%" * 66 + "/", 1024),  # long escaped path: every level just under the name limit
    _fill_to("long-" * 60 + "/", 1024),  # several hashed directory levels
]
# Same first few hundred bytes: long segments must not collide where they are cut.
TRICKY_KEYS += ["s" * 300 + "1", "s" * 300 + "2", "s" * 300, "s" * 300 + "/inside", "s" * 300 + "/inside/"]


def reference_list(keys, prefix="", delimiter="", start_after="", max_keys=1000):
    """S3's listing rules over ``keys``: (object keys, common prefixes, is_truncated)."""
    entries: list[tuple[str, bool]] = []  # (key or common prefix, is_prefix)
    truncated = False
    for key in sorted(keys, key=str.encode):
        if not key.startswith(prefix) or key.encode() <= start_after.encode():
            continue
        entry = (key, False)
        if delimiter:
            cut = key.find(delimiter, len(prefix))
            if cut >= 0:
                common = key[:cut + len(delimiter)]
                if common.encode() <= start_after.encode() or (entries and entries[-1] == (common, True)):
                    continue
                entry = (common, True)
        if len(entries) == max_keys:
            truncated = True
            break
        entries.append(entry)
    return [e for e, p in entries if not p], [e for e, p in entries if p], truncated


# Keys whose order differs between UTF-8 bytes, UTF-16 and "directories first" walks.
ORDER_KEYS = [
    "a", "a!", "a-b", "a.txt", "a/", "a//", "a//x", "a/b", "a/b/c", "a/b!", "a/b/", "a0", "a\x7f", "b", "A", "Z/z",
    "e", "é", "éa", "e/é", "😀", "\uff5e", "\uff5e/x", "photos/2024/a.jpg", "photos/2024/b.jpg",
    "photos/2025/c.jpg", "photos/top.jpg", "photos-old/x", "video/", "video/x.mp4", "x-1", "x-1-2", "x-2",
]


class KeyAndListingTests:
    """Keys (`a` next to `a/b`, escapes, dot segments, 1024 bytes) and listings; mixed into BackendConformance."""

    @pytest.mark.parametrize("key", TRICKY_KEYS, ids=lambda k: repr(k)[:40])
    async def test_tricky_key_round_trip(self, backend, bucket, key):
        data = f"body of {key!r}".encode()
        info = await put_bytes(backend, bucket, key, data, ObjectMeta("text/plain", {"k": "v"}))
        assert info.key == key
        assert await get_bytes(backend, bucket, key) == data
        head = await backend.head(bucket, key)
        assert (head.key, head.size, head.metadata) == (key, len(data), {"k": "v"})
        assert await list_all(backend, bucket) == ([key], [])
        assert (await list_all(backend, bucket, prefix=key))[0] == [key]
        await backend.delete(bucket, key)
        assert not await backend.exists(bucket, key)
        assert await list_all(backend, bucket) == ([], [])
        await backend.delete_bucket(bucket)  # nothing left behind that counts as an object

    async def test_tricky_keys_coexist(self, backend, bucket):
        for number, key in enumerate(TRICKY_KEYS):
            await put_bytes(backend, bucket, key, str(number).encode())
        for number, key in enumerate(TRICKY_KEYS):
            assert await get_bytes(backend, bucket, key) == str(number).encode(), f"key {key!r} was overwritten"
        assert (await list_all(backend, bucket))[0] == sorted(TRICKY_KEYS, key=str.encode)
        for key in TRICKY_KEYS[::2]:
            await backend.delete(bucket, key)
        assert (await list_all(backend, bucket))[0] == sorted(TRICKY_KEYS[1::2], key=str.encode)
        for number, key in list(enumerate(TRICKY_KEYS))[1::2]:
            assert await get_bytes(backend, bucket, key) == str(number).encode()

    async def test_listing_order_is_utf8_byte_order(self, backend, bucket):
        for key in reversed(ORDER_KEYS):
            await put_bytes(backend, bucket, key, b"")
        keys, prefixes = await list_all(backend, bucket)
        assert keys == sorted(ORDER_KEYS, key=str.encode) and prefixes == []
        page = await backend.list(bucket)
        assert not page.is_truncated and [o.key for o in page.objects] == keys

    @pytest.mark.parametrize("delimiter", ["", "/", "-", "/b"])
    async def test_listing_matches_s3_rules(self, backend, bucket, delimiter):
        for key in ORDER_KEYS:
            await put_bytes(backend, bucket, key, key.encode())
        prefixes = ["", "a", "a/", "a/b", "a//", "photos/", "photos", "p", "é", "\uff5e", "video/", "x-", "none/"]
        starts = ["", "a", "a/", "a/b", "a/b/c", "photos/2024/", "photos/2024/a.jpg", "é", "zzz", "\uffff"]
        for prefix in prefixes:
            for start_after in starts:
                expected = reference_list(ORDER_KEYS, prefix, delimiter, start_after)
                page = await backend.list(bucket, prefix, delimiter, start_after, 1000)
                actual = ([o.key for o in page.objects], page.common_prefixes, page.is_truncated)
                assert actual == expected, f"prefix={prefix!r} delimiter={delimiter!r} start_after={start_after!r}"
        listed = {o.key: o for o in (await backend.list(bucket)).objects}
        for key in ORDER_KEYS:
            assert listed[key].size == len(key.encode())

    @pytest.mark.parametrize("max_keys", [1, 2, 3, 7])
    @pytest.mark.parametrize("delimiter", ["", "/"])
    async def test_pagination_reproduces_the_full_list(self, backend, bucket, max_keys, delimiter):
        for key in ORDER_KEYS:
            await put_bytes(backend, bucket, key, b"")
        for prefix in ("", "a/", "photos/"):
            full = await backend.list(bucket, prefix, delimiter, "", 1000)
            keys, prefixes = await list_all(backend, bucket, prefix, delimiter, "", max_keys)
            assert keys == [o.key for o in full.objects], f"prefix={prefix!r}"
            assert prefixes == full.common_prefixes, f"prefix={prefix!r}"
            expected_keys, expected_prefixes, _ = reference_list(ORDER_KEYS, prefix, delimiter)
            assert (keys, prefixes) == (expected_keys, expected_prefixes)
            first = await backend.list(bucket, prefix, delimiter, "", max_keys)
            assert first.is_truncated == (len(expected_keys) + len(expected_prefixes) > max_keys)

    async def test_common_prefixes_only_for_existing_objects(self, backend, bucket):
        await put_bytes(backend, bucket, "gone/deep/key", b"x")
        await put_bytes(backend, bucket, "kept/key", b"x")
        await backend.delete(bucket, "gone/deep/key")
        assert await list_all(backend, bucket, delimiter="/") == ([], ["kept/"])
        assert await list_all(backend, bucket) == (["kept/key"], [])

    async def test_key_and_key_slash_prefix_coexist(self, backend, bucket):
        await put_bytes(backend, bucket, "a", b"file a")
        await put_bytes(backend, bucket, "a/b", b"file a/b")
        await put_bytes(backend, bucket, "a/", b"file a/")
        assert await get_bytes(backend, bucket, "a") == b"file a"
        assert await get_bytes(backend, bucket, "a/b") == b"file a/b"
        assert await get_bytes(backend, bucket, "a/") == b"file a/"
        assert await list_all(backend, bucket, delimiter="/") == (["a"], ["a/"])
        assert await list_all(backend, bucket, prefix="a/", delimiter="/") == (["a/", "a/b"], [])
        await backend.delete(bucket, "a")
        assert await get_bytes(backend, bucket, "a/b") == b"file a/b"
        await backend.delete(bucket, "a/")
        assert await list_all(backend, bucket) == (["a/b"], [])

    async def test_max_keys_zero(self, backend, bucket):
        await put_bytes(backend, bucket, "k", b"x")
        page = await backend.list(bucket, max_keys=0)
        assert page.objects == [] and page.common_prefixes == []

    async def test_listing_metadata(self, backend, bucket):
        """A backend that claims listing_metadata lists each object with the meta head() gives."""
        self.require(backend, "listing_metadata")
        meta = ObjectMeta("video/mp4", {"mtime": "1577836800.123456789", "mode": "100640"},
                          {"cache-control": "no-cache"})
        await put_bytes(backend, bucket, "dir/clip.mp4", b"x" * 10, meta)
        await put_bytes(backend, bucket, "plain", b"")
        for prefix, delimiter in (("", ""), ("dir/", "/")):
            for listed in (await backend.list(bucket, prefix, delimiter)).objects:
                assert listed.meta == (await backend.head(bucket, listed.key)).meta, listed.key
        assert (await backend.list(bucket, "dir/")).objects[0].meta.metadata == meta.metadata
