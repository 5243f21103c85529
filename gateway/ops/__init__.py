"""Operator tools that work on the files of cv-storage: backup, restore, migrate.

They read and write the object layout of plugins/fslayout.py directly (the
files are the truth, docs/storage-layout.md), so they need no running
gateway and a running one sees their work at once: every file they put in
place is written to a temp file, fsynced and renamed, as the backends do.

- stores.py    which backends of the settings keep files, and where
- tree.py      walking a store's files, installing one atomically
- progress.py  the progress line of long operations
- backup.py    ``gateway backup``: a tar archive with a manifest and checksums
- archive.py   reading and verifying a backup archive, writing nothing (``gateway restore --check``)
- restore.py   ``gateway restore``: verify the whole archive, then put it back
- migrate.py   ``gateway migrate``: copy a local store onto shared storage (docs/migration.md),
  with migrate_checks.py (what it refuses), migrate_copy.py (one verified copy),
  migrate_journal.py (what a pass put there) and migrate_report.py (the summary)

docs/operations.md is the operator's guide.
"""
