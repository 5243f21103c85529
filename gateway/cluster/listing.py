"""Merging the listings of several nodes into one S3 page."""

from __future__ import annotations

from ..backend import ListPage, ObjectInfo


def merge_pages(pages: list[ListPage], max_keys: int) -> ListPage:
    """One page from pages listed with the same prefix, delimiter, start_after and max_keys.

    Every entry of the merged first ``max_keys`` is among each source's
    first ``max_keys``, so this is exact. A key on two nodes appears once
    (the newer copy wins); common prefixes are merged.
    """
    objects: dict[str, ObjectInfo] = {}
    prefixes: set[str] = set()
    for page in pages:
        for info in page.objects:
            seen = objects.get(info.key)
            if seen is None or info.last_modified > seen.last_modified:
                objects[info.key] = info
        prefixes.update(page.common_prefixes)
    entries: list[tuple[bytes, str | ObjectInfo]] = [(k.encode(), o) for k, o in objects.items()]
    entries += [(p.encode(), p) for p in prefixes]
    entries.sort(key=lambda e: e[0])
    taken = entries[:max_keys]
    truncated = len(entries) > max_keys or any(p.is_truncated for p in pages)
    merged = ListPage([e for _, e in taken if not isinstance(e, str)], [e for _, e in taken if isinstance(e, str)])
    if truncated and taken:
        merged.is_truncated = True
        last = taken[-1][1]
        merged.next_marker = last if isinstance(last, str) else last.key
    return merged
