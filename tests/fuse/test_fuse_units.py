"""The mount's pure parts: caches with an injected clock, options, metadata parsing, request signing."""

from __future__ import annotations

import errno
import stat
import xml.etree.ElementTree as ET

import pytest

from gateway.cli_mount import parse_size, parse_umask
from gateway.fuse.cache import DIR, FILE, LINK, MISSING, Attr, AttrCache, DirCache, FirstBytes
from gateway.fuse.client import ObjectClient, ObjectStat, StoreError, _user_metadata
from gateway.fuse.fs import GatewayFS, MountOptions
from gateway.fuse.meta import apply_meta, maybe_symlink
from gateway.fuse.mount import MountConfig, fuse_options
from gateway.testing.clock import ManualClock


def test_attr_cache_expires_and_remembers_missing_names():
    clock = ManualClock()
    cache = AttrCache(ttl=5, clock=clock)
    cache.put("/b/f", Attr(FILE, 3))
    cache.put_missing("/b/gone")
    assert cache.get("/b/f").size == 3
    assert cache.get("/b/gone") is MISSING
    clock.now += 5.1
    assert cache.get("/b/f") is None and cache.get("/b/gone") is None


def test_a_listing_stamp_is_renewed_when_the_listing_ends():
    clock = ManualClock()
    cache = AttrCache(ttl=2, clock=clock)
    stamp = cache.stamp()
    cache.put("/b/first", Attr(FILE), stamp)
    clock.now += 10  # a long listing
    cache.put("/b/last", Attr(FILE), stamp)
    cache.renew(stamp)
    clock.now += 1
    assert cache.get("/b/first") is not None and cache.get("/b/last") is not None


def test_ttl_zero_disables_caching_and_size_is_bounded():
    assert AttrCache(ttl=0).get("/x") is None
    off = AttrCache(ttl=0)
    off.put("/x", Attr(FILE))
    assert off.get("/x") is None
    small = AttrCache(ttl=60, max_entries=3)
    for n in range(5):
        small.put(f"/b/{n}", Attr(FILE))
    assert [small.get(f"/b/{n}") is not None for n in range(5)] == [False, False, True, True, True]


def test_invalidate_tree():
    cache = AttrCache(ttl=60)
    for path in ("/b/d", "/b/d/x", "/b/d/y/z", "/b/dd"):
        cache.put(path, Attr(FILE))
    cache.invalidate_tree("/b/d")
    assert [cache.get(p) is not None for p in ("/b/d", "/b/d/x", "/b/d/y/z", "/b/dd")] == [False, False, False, True]


def test_dir_cache_keeps_small_listings_and_follows_local_changes():
    clock = ManualClock()
    dirs = DirCache(ttl=5, max_entries=2, clock=clock)
    dirs.put("/b/big", {"a": Attr(FILE), "b": Attr(FILE), "c": Attr(FILE)})
    assert dirs.get("/b/big") is None  # too many entries to keep
    dirs.put("/b/d", {"a": Attr(FILE)})
    dirs.add("/b/d", "new", Attr(DIR))
    dirs.discard("/b/d", "a")
    assert set(dirs.get("/b/d").entries) == {"new"}
    clock.now += 6
    assert dirs.get("/b/d") is None


def test_first_bytes_are_bounded_and_tied_to_the_etag():
    cache = FirstBytes(max_bytes=10)
    cache.put("/a", "e1", b"12345")
    cache.put("/b", "e2", b"123456")
    assert cache.get("/a", "e1") is None  # evicted: 11 bytes > 10
    assert cache.get("/b", "e2") == b"123456"
    assert cache.get("/b", "other-etag") is None


def test_metadata_gives_mode_owner_time_and_symlinks():
    attr = Attr(FILE, 5)
    apply_meta(attr, {"mode": "100751", "uid": "12", "gid": "34", "mtime": "1500000000.5"})
    assert (attr.mode, attr.uid, attr.gid, attr.mtime, attr.kind) == (0o751, 12, 34, 1500000000.5, FILE)
    link = Attr(FILE, 7)
    apply_meta(link, {"mode": f"{stat.S_IFLNK | 0o777:o}"})
    assert link.kind == LINK
    junk = Attr(FILE)
    apply_meta(junk, {"mode": "rwx", "uid": "-1", "mtime": "soon"})
    assert (junk.mode, junk.uid, junk.mtime) == (None, None, 0.0)
    assert maybe_symlink(Attr(FILE, 100, from_listing=True))
    assert not maybe_symlink(Attr(FILE, 100_000, from_listing=True))
    assert not maybe_symlink(Attr(FILE, 100))


def test_listing_user_metadata_gives_a_looked_up_attr():
    """A listing entry's <UserMetadata> (as MinIO writes it too: canonical header case, other
    elements) is the metadata a HEAD gives; without one, the entry stays "from a listing"."""
    node = ET.fromstring(
        '<UserMetadata xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><content-type>text/plain</content-type>'
        '<X-Amz-Meta-Mode>120777</X-Amz-Meta-Mode><X-Amz-Meta-Mtime>1500000000.123456789</X-Amz-Meta-Mtime>'
        '<X-Amz-Server-Side-Encryption>AES256</X-Amz-Server-Side-Encryption></UserMetadata>')
    metadata, content_type = _user_metadata(node)
    assert (metadata, content_type) == ({"mode": "120777", "mtime": "1500000000.123456789"}, "text/plain")
    assert _user_metadata(ET.fromstring("<UserMetadata/>")) == ({}, "")
    assert _user_metadata(None) == (None, "")
    fs = GatewayFS.__new__(GatewayFS)  # _attr_from_stat needs nothing of the mount
    link = fs._attr_from_stat(ObjectStat("d/l", 10, "e", 1.0, metadata))
    assert (link.kind, link.from_listing, link.mtime_ns) == (LINK, False, 1_500_000_000_123_456_789)
    assert not maybe_symlink(fs._attr_from_stat(ObjectStat("d/f", 10, "e", 1.0, {})))
    assert maybe_symlink(fs._attr_from_stat(ObjectStat("d/f", 10, "e", 1.0, None)))


def test_stat_dicts_apply_umask_and_default_owner():
    fs = GatewayFS.__new__(GatewayFS)  # to_stat needs only the options
    fs.options = MountOptions(uid=7, gid=8, umask=0o027)
    st = fs.to_stat(Attr(FILE, 1000, 12.5))
    assert st["st_mode"] == stat.S_IFREG | 0o640 and (st["st_uid"], st["st_gid"]) == (7, 8)
    assert st["st_blocks"] == 2 and st["st_mtime"] == 12_500_000_000
    assert fs.to_stat(Attr(DIR))["st_mode"] == stat.S_IFDIR | 0o750
    assert fs.to_stat(Attr(FILE, 3, mode=0o700, uid=0))["st_mode"] == stat.S_IFREG | 0o700
    assert fs.to_stat(Attr(LINK, 9, target="abc"))["st_size"] == 3


def test_fuse_options_follow_the_mount_options():
    config = MountConfig("http://127.0.0.1:1", "/mnt", "k", "s", allow_other=True,
                         fs=MountOptions(read_only=True, attr_ttl=0))
    fuse2 = fuse_options(config, 2)
    assert fuse2["ro"] and fuse2["allow_other"] and fuse2["big_writes"] and fuse2["atomic_o_trunc"]
    assert fuse2["attr_timeout"] == 0 and fuse2["default_permissions"]
    fuse3 = fuse_options(config, 3)
    assert "big_writes" not in fuse3 and "atomic_o_trunc" not in fuse3  # unknown to libfuse 3


def test_size_and_umask_parsing():
    assert parse_size("8G") == 8 * 1024 ** 3 and parse_size("512MiB") == 512 * 1024 ** 2 and parse_size("100") == 100
    assert parse_umask("022") == 0o22
    import click

    with pytest.raises(click.BadParameter):
        parse_size("lots")
    with pytest.raises(click.BadParameter):
        parse_umask("999")


def test_client_signs_requests_the_gateway_accepts_and_maps_errors(fuse_gw):
    client = ObjectClient(fuse_gw.endpoint, fuse_gw.access_key, fuse_gw.secret_key)
    client.create_bucket("units-client")
    key = "odd name/ü+%&=?.txt"
    client.put("units-client", key, b"data", 4, {"mode": "100600"})
    stat_, data = client.get_first("units-client", key, 2)
    assert (stat_.size, data, stat_.metadata["mode"]) == (4, b"da", "100600")
    assert [o.key for o in client.list_page("units-client", "odd name/").objects] == [key]
    with pytest.raises(StoreError) as info:
        client.head("units-client", "missing")
    assert info.value.errno == errno.ENOENT
    with pytest.raises(StoreError) as info:
        client.delete_bucket("units-client")
    assert info.value.errno == errno.ENOTEMPTY
    wrong = ObjectClient(fuse_gw.endpoint, fuse_gw.access_key, "not-the-secret")
    with pytest.raises(StoreError) as info:
        wrong.list_buckets()
    assert info.value.errno == errno.EACCES
    dead = ObjectClient("http://127.0.0.1:9", "k", "s", timeout=1)
    with pytest.raises(StoreError) as info:
        dead.list_buckets()
    assert info.value.errno == errno.EIO


def test_a_refused_request_is_described_in_one_clean_line():
    from types import SimpleNamespace

    from gateway.fuse.client import ObjectClient

    client = ObjectClient("http://127.0.0.1:1", "k", "s")
    answer = SimpleNamespace(status=403, data=b"<Error><Code>SignatureDoesNotMatch</Code><Message>Check your key "
                                              b"and signing method.</Message></Error>")
    error = client._error(answer, "GET", "", "")
    assert error.errno == errno.EACCES
    assert str(error.strerror) == "GET /: 403 SignatureDoesNotMatch Check your key and signing method"


def test_http_dates_parse_fast_and_in_every_form():
    from gateway.fuse.client import _http_date
    assert _http_date("Fri, 27 Nov 2026 04:10:54 GMT") == 1795752654.0
    assert _http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777.0  # RFC 850, via email.utils
    assert _http_date("Sun Nov  6 08:49:37 1994") == 784111777.0  # asctime
    assert _http_date("Fri, 27 Nov 2026 04:10:5x GMT") == 0.0
    assert _http_date("garbage") == 0.0
