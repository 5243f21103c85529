"""Ordinary tools on a real mount: cp -r, rsync -a, find, du, sha256sum, tar, mv, git."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
from fuse_helpers import sh


@pytest.fixture
def tree(tmp_path):
    """A small local tree: nested directories, binary and text files, an empty file and a symlink."""
    root = tmp_path / "src"
    (root / "a" / "b").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "top.txt").write_text("top\n")
    (root / "a" / "one.bin").write_bytes(os.urandom(300_000))
    (root / "a" / "b" / "two.txt").write_text("two\n" * 1000)
    (root / "a" / "b" / "zero").write_bytes(b"")
    (root / "a" / "link").symlink_to("one.bin")
    os.chmod(root / "top.txt", 0o640)
    os.utime(root / "a" / "b" / "two.txt", (1_600_000_000, 1_600_000_000))
    return root


def _digests(root) -> dict[str, str]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = "link:" + os.readlink(path)
            elif os.path.isdir(path):
                found[rel] = "dir"
            else:
                with open(path, "rb") as f:
                    found[rel] = hashlib.sha256(f.read()).hexdigest()
    return found


def test_cp_find_du_sha256sum(mnt, bucket, tree):
    dest = mnt.path / bucket
    sh(f"cp -r {tree} {dest}/copy", cwd=dest)
    assert _digests(dest / "copy") == _digests(tree)
    found = sorted(sh("find copy", cwd=dest).split())
    expected = sorted(["copy"] + ["copy/" + p for p in _digests(tree)])
    assert found == expected
    du = int(sh("du -s --apparent-size -B1 copy/a/one.bin", cwd=dest).split()[0])
    assert du == 300_000
    sums = sh("sha256sum copy/a/one.bin copy/a/b/two.txt", cwd=dest)
    assert hashlib.sha256((tree / "a" / "one.bin").read_bytes()).hexdigest() in sums


def test_rsync_archive_keeps_content_modes_and_times(mnt, bucket, tree):
    assert shutil.which("rsync"), "rsync is missing: run `make test-deps` (Debian package rsync)"
    dest = mnt.path / bucket / "sync"
    sh(f"rsync -a {tree}/ {dest}/", cwd=mnt.path)
    assert _digests(dest) == _digests(tree)
    assert os.stat(dest / "top.txt").st_mode & 0o777 == 0o640
    assert int(os.stat(dest / "a" / "b" / "two.txt").st_mtime) == 1_600_000_000
    # Back out again, through a second rsync, byte for byte.
    back = tree.parent / "back"
    sh(f"rsync -a {dest}/ {back}/", cwd=mnt.path)
    assert _digests(back) == _digests(tree)


def test_tar_create_and_extract(mnt, bucket, tree, tmp_path):
    dest = mnt.path / bucket
    sh(f"tar -C {tree} -cf {dest}/t.tar .", cwd=dest)
    sh("mkdir x && tar -C x -xf t.tar", cwd=dest)
    assert _digests(dest / "x") == _digests(tree)
    out = tmp_path / "out"
    out.mkdir()
    sh(f"tar -C {dest}/x -cf - . | tar -C {out} -xf -", cwd=dest)
    assert _digests(out) == _digests(tree)


def test_mv_directory(mnt, bucket, tree, fuse_gw):
    dest = mnt.path / bucket
    sh(f"cp -r {tree} {dest}/before", cwd=dest)
    sh("mv before after", cwd=dest)
    assert not (dest / "before").exists()
    assert _digests(dest / "after") == _digests(tree)
    keys = [o["Key"] for o in fuse_gw.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert not [k for k in keys if k.startswith("before/")]
    assert "after/a/b/two.txt" in keys


def test_git_init_and_commit(mnt, bucket, tree):
    assert shutil.which("git"), "git is missing: run `make test-deps`"
    repo = mnt.path / bucket / "repo"
    repo.mkdir()
    env = "GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@example.com GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@example.com"
    sh("git init -q .", cwd=repo)
    sh(f"cp -r {tree}/. .", cwd=repo)
    sh(f"git add -A && {env} git commit -q -m first", cwd=repo)
    (repo / "top.txt").write_text("changed\n")
    sh(f"git commit -q -am second && {env} git status --porcelain", cwd=repo)
    log = sh("git log --oneline", cwd=repo)
    assert len(log.strip().splitlines()) == 2
    assert sh("git status --porcelain", cwd=repo).strip() == ""
    sh("git fsck --no-progress", cwd=repo)
    assert sh("git show HEAD:top.txt", cwd=repo) == "changed\n"
