"""Merging the listings of several nodes into one S3 page."""

from __future__ import annotations

from ..backend import ListPage, ObjectInfo


def merge_pages(pages: list[ListPage], max_keys: int) -> ListPage:
    """One page from pages listed with the same prefix, delimiter, start_after and max_keys.

    Every entry of the merged first ``max_keys`` is among each source's
    first ``max_keys``, so this is exact. A key on two nodes appears once
    (the newer copy wins, in wire.is_older's order; of one version, a copy
    a node holds over one it only knows of, ``ListPage.superseded``); common
    prefixes are merged. The merged page names the keys it took from what a
    node only knows of, and says whether every object carries its meta
    (None when a source page did not say).
    """
    objects: dict[str, ObjectInfo] = {}
    source: dict[str, ListPage] = {}
    prefixes: set[str] = set()
    for page in pages:
        for info in page.objects:
            seen = objects.get(info.key)
            if seen is None or (info.last_modified, info.etag) > (seen.last_modified, seen.etag) or (
                    (info.last_modified, info.etag) == (seen.last_modified, seen.etag)
                    and info.key in source[info.key].superseded and info.key not in page.superseded):
                objects[info.key] = info
                source[info.key] = page
        prefixes.update(page.common_prefixes)
    entries: list[tuple[bytes, str | ObjectInfo]] = [(k.encode(), o) for k, o in objects.items()]
    entries += [(p.encode(), p) for p in prefixes]
    entries.sort(key=lambda e: e[0])
    taken = entries[:max_keys]
    truncated = len(entries) > max_keys or any(p.is_truncated for p in pages)
    merged = ListPage([e for _, e in taken if not isinstance(e, str)], [e for _, e in taken if isinstance(e, str)])
    merged.superseded = frozenset(info.key for info in merged.objects if info.key in source[info.key].superseded)
    if all(page.metadata is not None for page in pages):
        merged.metadata = all(source[info.key].metadata and info.key not in merged.superseded
                              for info in merged.objects)
    if truncated and taken:
        merged.is_truncated = True
        last = taken[-1][1]
        merged.next_marker = last if isinstance(last, str) else last.key
    return merged


def differing_copies(pages: dict[str, ListPage], up_to: str | None = None) -> dict[str, dict[str, ObjectInfo]]:
    """The keys that more than one node lists in different versions, each with its copy by node
    (``pages``: node -> its page); only keys up to ``up_to`` (a merged page's last key) when given.

    In local mode a key lives on one node: a second, different copy is one that an overwrite could
    not retire (docs/cluster.md, "Repair"). The same version on two nodes is no such copy, nor is a
    copy a node lists for a moment after dropping it for the newer one (``ListPage.superseded``).
    """
    listed = [[info.key for info in page.objects] for page in pages.values()]
    if len(set().union(*listed)) == sum(map(len, listed)):
        return {}  # no key on two nodes: the usual case, found without a dict entry per key
    holders: dict[str, dict[str, ObjectInfo]] = {}
    for node, page in pages.items():
        for info in page.objects:
            if (up_to is None or info.key <= up_to) and info.key not in page.superseded:
                holders.setdefault(info.key, {})[node] = info
    return {key: copies for key, copies in holders.items()
            if len(copies) > 1 and len({(info.last_modified, info.etag) for info in copies.values()}) > 1}
