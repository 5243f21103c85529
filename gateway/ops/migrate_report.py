"""What ``gateway migrate`` prints at the end of a pass: the summary and the next steps
(docs/migration.md, "The summary and the exit code")."""

from __future__ import annotations

from .migrate import MigrateResult
from .progress import human_bytes

SHOW = 20  # names listed per kind of finding; the rest are counted


def _listed(names: list[str]) -> list[str]:
    lines = [f"      {n}" for n in names[:SHOW]]
    if len(names) > SHOW:
        lines.append(f"      ... and {len(names) - SHOW:,} more")
    return lines


def summary(r: MigrateResult) -> str:
    def with_bytes(n: int, nbytes: int) -> str:
        return f"{n:,} ({human_bytes(nbytes)})" if n else "0"

    head = "dry run, nothing was changed; a pass would do this" if r.dry_run else "migrated"
    lines = [f"{head}: backend {r.source.name!r} ({r.source.root}) -> {r.target}",
             f"  copied:                    {with_bytes(r.copied, r.copied_bytes)}",
             f"  already there:             {r.already:,}",
             f"  replaced (newer here):     {with_bytes(r.replaced, r.replaced_bytes)}",
             f"  kept newer copy on target: {len(r.kept_newer):,}"]
    lines += _listed(r.kept_newer)
    lines.append(f"  removed as deleted:        {r.removed:,}"
                 + (f" ({r.left_alone:,} left: another server's copy now)" if r.left_alone else ""))
    lines.append(f"  errors:                    {len(r.errors):,}")
    lines += _listed(r.errors)
    lines.append(f"  layout files:              {r.layout_copied:,} copied, {r.layout_already:,} already there, "
                 f"{r.layout_kept:,} kept the target's; {r.buckets_made:,} empty bucket directories made")
    if r.other_files:
        lines.append(f"  not of the object layout, copied as they are: {len(r.other_files):,}")
        lines += _listed(r.other_files)
    if not r.dry_run:
        if r.unchecked:
            lines.append(f"verification FAILED: {r.unchecked:,} files of this server could not be checked on the "
                         f"target: reading it failed ({r.unchecked_reason}). Not known to be missing: run the "
                         "pass again once the target works")
        if r.missing:
            lines.append(f"verification FAILED: {len(r.missing):,} files of this server are not on the target "
                         "(nor a newer version):")
            lines += _listed(r.missing)
        elif not r.unchecked:
            lines.append(f"verified: all {r.verified:,} files of this server are on the target "
                         "(the same or a newer version)"
                         + (f"; {r.damaged:,} damaged, listed under errors, left out" if r.damaged else ""))
        if r.changed_during:
            lines.append(f"changed here during the pass: {r.changed_during:,} (the next pass copies them)")
    lines.append(f"journal: {r.journal}")
    return "\n".join(lines)


def next_steps(r: MigrateResult) -> str:
    store = r.source
    return "\n".join([
        "Next steps:",
        "  1. Stop the gateway on this server (if it still runs).",
        "  2. Run the same command again. This final pass copies what changed since and verifies",
        "     everything; repeat it until it says \"verified\" and nothing \"changed here during the pass\".",
        "  3. Point the backend at the share in the config, then start the gateway:",
        f"         [backends.{store.name}]",
        "         type = \"sharedfs\"",
        f"         root = \"{r.target}\"",
        f"     (or mount the share at {store.root} and change only the type).",
        "  Several servers merging into one share: steps 1 and 2 on each, then 3 on each.",
    ])
