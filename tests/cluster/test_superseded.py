"""RecentlySuperseded: the newer versions a node dropped its copy for, in its listings a moment more
(gateway/cluster/superseded.py), with an injected clock."""

from __future__ import annotations

from gateway.backend import ListPage, ObjectInfo
from gateway.cluster import wire
from gateway.cluster.listing import differing_copies
from gateway.cluster.superseded import RecentlySuperseded


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def info(key: str, modified: float = 1.0, etag: str = "e") -> ObjectInfo:
    return ObjectInfo(key, 3, etag, modified)


def keys(page: ListPage) -> list[str]:
    return [o.key for o in page.objects]


def test_nothing_dropped_gives_the_page_itself():
    page = ListPage([info("a")], [])
    assert RecentlySuperseded().add_to("b", page, "", "", "", 1000) is page


def test_a_dropped_copy_is_listed_in_order_and_named_until_it_expires_or_is_deleted():
    clock = Clock()
    dropped = RecentlySuperseded(listed_for=10, clock=clock)
    dropped.add("b", info("m"))
    dropped.add("other-bucket", info("n"))
    page = ListPage([info("a"), info("z")], [])
    listed = dropped.add_to("b", page, "", "", "", 1000)
    assert keys(listed) == ["a", "m", "z"] and listed.superseded == {"m"}
    assert keys(page) == ["a", "z"]  # the node's own page is left as it was
    clock.now += 9.9
    assert keys(dropped.add_to("b", page, "", "", "", 1000)) == ["a", "m", "z"]
    clock.now += 0.2
    assert dropped.add_to("b", page, "", "", "", 1000) is page
    assert len(dropped) == 0  # expired entries are forgotten, not only skipped
    dropped.add("b", info("m"))
    dropped.forget("b", "m")
    assert dropped.add_to("b", page, "", "", "", 1000) is page


def test_the_copy_the_node_holds_wins_over_a_version_it_knew_of_and_is_not_named():
    dropped = RecentlySuperseded()
    dropped.add("b", info("k", modified=1.0, etag="elsewhere"))
    held = info("k", modified=2.0, etag="new")  # written here again since
    listed = dropped.add_to("b", ListPage([held], [], metadata=True), "", "", "", 1000)
    assert listed.objects == [held] and not listed.superseded and listed.metadata is True


def test_of_one_version_the_merge_prefers_the_copy_a_node_holds():
    """The node the version is on lists it with its meta; another node knows only its ETag and size."""
    from gateway.backend import ObjectMeta
    from gateway.cluster.listing import merge_pages

    knows = RecentlySuperseded()
    knows.add("b", info("k", modified=2.0, etag="v2"))
    known = knows.add_to("b", ListPage([], [], metadata=True), "", "", "", 1000)
    holder = ListPage([ObjectInfo("k", 3, "v2", 2.0, ObjectMeta(metadata={"camera": "7"}))], [], metadata=True)
    for pages in ([known, holder], [holder, known]):
        merged = merge_pages(pages, 1000)
        assert merged.objects[0].meta.metadata == {"camera": "7"} and not merged.superseded
        assert merged.metadata is True
    merged = merge_pages([known], 1000)  # the holder's page not there (or taken before the version landed)
    assert [(o.key, o.etag) for o in merged.objects] == [("k", "v2")] and merged.superseded == {"k"}
    assert merged.metadata is False


def test_prefix_delimiter_start_after_and_max_keys_apply_to_dropped_copies():
    dropped = RecentlySuperseded()
    for key in ("photos/2024/a.jpg", "photos/c.jpg", "photos/d.jpg", "video/x", "photos/2025/d.jpg"):
        dropped.add("b", info(key))
    page = ListPage([info("photos/b.jpg")], [], metadata=True)  # the node's page after start-after
    listed = dropped.add_to("b", page, "photos/", "/", "photos/a.jpg", 2)
    assert listed.common_prefixes == [] and keys(listed) == ["photos/b.jpg", "photos/c.jpg"]
    assert listed.is_truncated and listed.next_marker == "photos/c.jpg"
    assert listed.metadata is False  # an overwrite tells the version, not its meta
    listed = dropped.add_to("b", ListPage([], []), "photos/", "/", "", 2)
    assert listed.common_prefixes == ["photos/2024/", "photos/2025/"] and listed.objects == []
    assert listed.is_truncated and listed.next_marker == "photos/2025/"


def test_at_most_max_entries_are_kept_the_oldest_forgotten():
    dropped = RecentlySuperseded(max_entries=2)
    for key in ("a", "b", "c"):
        dropped.add("b", info(key))
    assert keys(dropped.add_to("b", ListPage([], []), "", "", "", 1000)) == ["b", "c"]


def test_pages_carry_the_dropped_keys_between_nodes_and_repair_leaves_them_alone():
    dropped = RecentlySuperseded()
    dropped.add("b", info("k", modified=1.0, etag="old"))
    own = dropped.add_to("b", ListPage([], []), "", "", "", 1000)
    received = wire.page_from_json(wire.page_to_json(own, True))
    assert received.superseded == {"k"} and keys(received) == ["k"]
    assert "superseded" not in wire.page_to_json(ListPage([info("k")], []), True)  # as before for every other page
    newer = ListPage([info("k", modified=2.0, etag="new")], [])
    assert differing_copies({"r1": received, "r2": newer}) == {}
    received.superseded = frozenset()
    assert set(differing_copies({"r1": received, "r2": newer})) == {"k"}
