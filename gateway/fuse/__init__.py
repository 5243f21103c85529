"""The FUSE mount: cv-storage as a filesystem, through the gateway's S3 API.

Layers, from the wire up (only ``operations`` and ``mount`` import the FUSE binding):

- ``client``     synchronous, pooled S3 client (urllib3 + a small SigV4 signer); raises OSError with an errno
- ``cache``      attribute and directory caches with TTLs and an injected clock
- ``lean_http``  a lean GET client (lookups, ranged reads, pipelined GETs) next to urllib3
- ``files``      open files: streamed sequential reads, write spooling and uploads
- ``statahead``  fetching the next small files of a directory read in name order
- ``fs``         the filesystem in path terms (lookup, readdir, rename, ...), no FUSE types
- ``operations`` the thin mfusepy ``Operations`` translator
- ``readahead``  raising the kernel's read-ahead window of a mount (sysfs), so reads arrive as 1 MiB requests
- ``mount``      options, signals, running the FUSE loop
"""
