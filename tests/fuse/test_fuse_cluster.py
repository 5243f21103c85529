"""A mount on a cluster while a storing node is down (kill -9): directories still open, files the other
nodes hold still read, new files can be created; names only the down node could settle follow the
cluster's listing policy: missing (ENOENT) by default, EIO with strict_listings (docs/fuse.md, "A
cluster node down")."""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile

import pytest

NO_CACHE = ["--attr-ttl", "0", "--dir-ttl", "0"]  # every lookup asks the gateway


def start_nodes(tmp_path, strict: bool):
    from cluster.conftest import ClusterNodes

    nodes = ClusterNodes(tmp_path / "cluster", f"sqlite:///{tmp_path}/registry.db")
    env = {"GATEWAY_STRICT_LISTINGS": "true"} if strict else None
    try:
        nodes.add("p1", "primary", extra_env=env)
        nodes.add_many([("r1", "redundant"), ("r2", "redundant")], extra_env=env)
        nodes.wait_known(3)
        nodes["p1"].client().create_bucket(Bucket="cams")
        nodes["r1"].client().put_object(Bucket="cams", Key="dir/on-r1.jpg", Body=b"r1" * 1000)  # kept by r1
        nodes["r2"].client().put_object(Bucket="cams", Key="dir/on-r2.jpg", Body=b"r2" * 1000)
        nodes["r1"].client().put_object(Bucket="cams", Key="only-r1/a.jpg", Body=b"a")
        nodes["r2"].client().put_object(Bucket="cams", Key="top-on-r2.jpg", Body=b"top")
    except BaseException:
        nodes.stop()
        raise
    return nodes


def test_a_node_down_leaves_the_rest_of_the_mount_usable(tmp_path, mount_factory):
    nodes = start_nodes(tmp_path, strict=False)
    try:
        mount = mount_factory(NO_CACHE, gateway=nodes["p1"])
        cams = mount.path / "cams"
        assert sorted(os.listdir(cams / "dir")) == ["on-r1.jpg", "on-r2.jpg"]
        nodes["r1"].kill()
        # "dir" is no object the others hold, and a GET of it is a 503 (r1 might hold it): the listing
        # says it is a directory. Before, every lookup of a directory was EIO while r1 was down.
        assert (cams / "dir").is_dir()
        assert sorted(os.listdir(cams / "dir")) == ["on-r2.jpg"]  # what the others hold, as `ls` on S3
        assert (cams / "dir" / "on-r2.jpg").read_bytes() == b"r2" * 1000
        with pytest.raises(FileNotFoundError):
            (cams / "dir" / "on-r1.jpg").stat()
        assert not (cams / "only-r1").exists()
        (cams / "dir" / "new.jpg").write_bytes(b"written while r1 is down")
        assert nodes["r2"].client().get_object(Bucket="cams", Key="dir/new.jpg")["Body"].read() == \
            b"written while r1 is down"
        # Exclusive creates too (cp to a new name, mkstemp, lock files): their create-only PUT is a 503
        # while r1 may hold the name; the listings say whether it exists. They were all EIO.
        fd = os.open(cams / "dir" / "excl.lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, b"locked")
        os.close(fd)
        with pytest.raises(FileExistsError):
            os.open(cams / "dir" / "on-r2.jpg", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        source = tmp_path / "copied.jpg"
        source.write_bytes(b"copied while r1 is down")
        subprocess.run(["cp", str(source), str(cams / "dir" / "copied.jpg")], check=True, timeout=60)
        with tempfile.NamedTemporaryFile(dir=cams / "dir", delete=False) as temporary:  # mkstemp
            temporary.write(b"temp")
        for key, body in (("dir/excl.lock", b"locked"), ("dir/copied.jpg", b"copied while r1 is down"),
                          (f"dir/{os.path.basename(temporary.name)}", b"temp")):
            assert nodes["r2"].client().get_object(Bucket="cams", Key=key)["Body"].read() == body, key
        nodes.restart("r1")
        nodes.wait_known(3)
        assert (cams / "dir" / "on-r1.jpg").read_bytes() == b"r1" * 1000
        assert sorted(os.listdir(cams / "dir")) == sorted(["copied.jpg", "excl.lock", "new.jpg", "on-r1.jpg",
                                                          "on-r2.jpg", os.path.basename(temporary.name)])
    finally:
        nodes.stop()


def test_with_strict_listings_the_down_nodes_names_are_eio_not_missing(tmp_path, mount_factory):
    nodes = start_nodes(tmp_path, strict=True)
    try:
        mount = mount_factory(NO_CACHE, gateway=nodes["p1"])
        cams = mount.path / "cams"
        nodes["r1"].kill()
        assert (cams / "top-on-r2.jpg").read_bytes() == b"top"  # its GET answers
        # Every name the answering nodes cannot settle, a directory's too (its listing is refused).
        for name in ("dir", "only-r1", "not-anywhere.jpg"):
            with pytest.raises(OSError) as info:
                (cams / name).stat()
            assert info.value.errno == errno.EIO, name  # never a false "No such file or directory"
        with pytest.raises(OSError) as info:
            os.listdir(cams)
        assert info.value.errno == errno.EIO
        nodes.restart("r1")
        nodes.wait_known(3)
        assert (cams / "dir" / "on-r1.jpg").read_bytes() == b"r1" * 1000
    finally:
        nodes.stop()
