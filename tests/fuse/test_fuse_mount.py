"""Mount life cycle and failures: signals, fusermount -u, the fstab helper, dead or hung gateways, credentials."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fuse_helpers import sh

from gateway.fuse.fstab import UsageError, mount_args
from gateway.fuse.testing import unmount
from gateway.testing.server import GatewayProcess


def _wait_exit(process, timeout: float = 20.0) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the mount process did not exit within {timeout}s")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "fusermount"])
def test_clean_unmount(fuse_gw, bucket, mount_factory, how):
    mount = mount_factory()
    (mount.path / bucket / "f").write_bytes(b"kept")
    if how == "fusermount":
        assert unmount(mount.path)
    else:
        mount.process.send_signal(getattr(signal, how))
    assert _wait_exit(mount.process) == 0
    assert not os.path.ismount(mount.path)
    assert fuse_gw.client().get_object(Bucket=bucket, Key="f")["Body"].read() == b"kept"


def test_two_processes_write_and_read_each_others_files(mnt, bucket, mount_factory):
    """Two writers, each on its own mount of the same gateway, read each other's files after close."""
    other = mount_factory(["--attr-ttl", "0.5", "--dir-ttl", "0.5"])
    script = textwrap.dedent("""
        import hashlib, os, sys, time
        mine, theirs, me, peer = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
        for n in range(20):
            with open(os.path.join(mine, f"{me}-{n}"), "wb") as f:
                f.write(hashlib.sha256(f"{me}{n}".encode()).digest() * (n + 1))
        deadline = time.monotonic() + 30
        for n in range(20):
            expected = hashlib.sha256(f"{peer}{n}".encode()).digest() * (n + 1)
            path = os.path.join(theirs, f"{peer}-{n}")
            while True:
                try:
                    with open(path, "rb") as f:
                        if f.read() == expected:
                            break
                except FileNotFoundError:
                    pass
                if time.monotonic() > deadline:
                    sys.exit(f"{me}: {path} never appeared with the right content")
                time.sleep(0.05)
        print(f"{me} ok")
    """)
    first, second = mnt.path / bucket, other.path / bucket
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(first), str(first), "a", "b"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True),
        subprocess.Popen([sys.executable, "-c", script, str(second), str(first), "b", "a"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True),
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert sorted(os.listdir(second)) == sorted([f"a-{n}" for n in range(20)] + [f"b-{n}" for n in range(20)])


def test_dead_gateway_gives_eio_not_a_hang(tmp_path, mount_factory):
    with GatewayProcess(tmp_path / "gw") as gw:
        gw.client().create_bucket(Bucket="bk1")
        gw.client().put_object(Bucket="bk1", Key="f", Body=b"x")
        mount = mount_factory(["--timeout", "2", "--attr-ttl", "0", "--dir-ttl", "0"], gateway=gw)
        assert (mount.path / "bk1" / "f").read_bytes() == b"x"
        gw.kill()
        probe = ("import os, sys\ntry:\n    os.stat(sys.argv[1])\nexcept OSError as e:\n    print(e.errno)\n"
                 "else:\n    print('ok')")
        for path in (mount.path / "bk1" / "f", mount.path / "bk1" / "other", mount.path / "bk1"):
            out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True,
                                 timeout=60, check=False).stdout.strip()
            assert out == str(errno.EIO), f"stat {path}: {out}"
        assert "unreachable" in mount.log()


def test_hung_gateway_gives_eio_after_the_timeout(tmp_path, mount_factory):
    with GatewayProcess(tmp_path / "gw") as gw:
        gw.client().create_bucket(Bucket="bk1")
        gw.client().put_object(Bucket="bk1", Key="big", Body=os.urandom(48 * 1024 * 1024))
        mount = mount_factory(["--timeout", "1", "--attr-ttl", "0", "--dir-ttl", "0"], gateway=gw)
        os.listdir(mount.path / "bk1")
        reader = open(mount.path / "bk1" / "big", "rb", buffering=0)
        try:
            assert len(reader.read(1024 * 1024)) == 1024 * 1024 and len(reader.read(1024 * 1024)) == 1024 * 1024
            gw.process.send_signal(signal.SIGSTOP)  # mid-stream: the gateway stops answering
            try:
                listing = subprocess.run(["ls", str(mount.path / "bk1")], capture_output=True, text=True,
                                         timeout=60, check=False)
                with pytest.raises(OSError) as info:
                    while reader.read(1024 * 1024):  # bounded: 48 reads at most before EOF
                        pass
            finally:
                gw.process.send_signal(signal.SIGCONT)
        finally:
            reader.close()
        assert listing.returncode != 0 and "Input/output error" in listing.stderr
        assert info.value.errno == errno.EIO


def test_an_exclusive_create_answered_late_is_not_sent_again(tmp_path, mount_factory):
    """A gateway that stalls longer than --timeout (but not twice as long) answers the first PUT
    late, having stored the file. The pool used to send the request again meanwhile, whose
    `If-None-Match: *` then failed against the file the first attempt created: the program got EEXIST
    for a lock file it had itself just taken, and the lock stayed held by nobody. A conditional PUT
    is not sent twice now: the answer is EIO (the outcome is unknown), never a wrong EEXIST."""
    with GatewayProcess(tmp_path / "gw") as gw:
        gw.client().create_bucket(Bucket="bk1")
        mount = mount_factory(["--timeout", "1"], gateway=gw)
        lock = mount.path / "bk1" / "lock"
        with pytest.raises(FileNotFoundError):
            os.stat(lock)  # the kernel goes straight to CREATE now, without a lookup to stall on
        gw.pause()
        resume = threading.Timer(1.5, gw.resume, kwargs={"settle": False})
        resume.start()
        try:
            with pytest.raises(OSError) as info:
                os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        finally:
            resume.join()
            gw.resume(settle=False)
        assert info.value.errno == errno.EIO, info.value
        s3 = gw.client()
        deadline = time.monotonic() + 10  # the late first attempt stores the file (once)
        while "Contents" not in s3.list_objects_v2(Bucket="bk1") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [(o["Key"], o["Size"]) for o in s3.list_objects_v2(Bucket="bk1")["Contents"]] == [("lock", 0)]


def test_refused_credentials_give_eacces(tmp_path, mount_factory):
    gw = GatewayProcess(tmp_path / "gw").start()
    try:
        gw.client().create_bucket(Bucket="bk1")
        mount = mount_factory(["--attr-ttl", "0", "--dir-ttl", "0"], gateway=gw)
        gw.stop()
        # The same storage and port, restarted with a rotated secret key.
        gw = GatewayProcess(tmp_path / "gw", port=gw.port, secret_key="another-secret-key-0123").start()
        with pytest.raises(PermissionError):
            os.listdir(mount.path / "bk1")
    finally:
        gw.stop()


def test_mount_refuses_wrong_credentials_at_start(fuse_gw, tmp_path):
    (tmp_path / "m").mkdir()
    env = {**os.environ, "GATEWAY_ACCESS_KEY": fuse_gw.access_key, "GATEWAY_SECRET_KEY": "wrong-secret-key-000"}
    result = subprocess.run([sys.executable, "-m", "gateway", "mount", fuse_gw.endpoint, str(tmp_path / "m")],
                            capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 32
    assert "refused" in result.stderr and "secret" in result.stderr
    assert not os.path.ismount(tmp_path / "m")


def test_mount_without_libfuse_says_what_to_install(fuse_gw, tmp_path):
    """Said by the command itself, before it goes to the background (it used to exit 32 with only
    "rerun with --foreground")."""
    (tmp_path / "m").mkdir()
    env = {**os.environ, "GATEWAY_ACCESS_KEY": fuse_gw.access_key, "GATEWAY_SECRET_KEY": fuse_gw.secret_key,
           "FUSE_LIBRARY_NAME": "no-such-libfuse"}
    result = subprocess.run([sys.executable, "-m", "gateway", "mount", fuse_gw.endpoint, str(tmp_path / "m")],
                            capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 32
    assert "libfuse could not be loaded" in result.stderr and "apt-get install fuse3" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not os.path.ismount(tmp_path / "m")


@pytest.mark.parametrize("endpoint, args, says", [
    ("127.0.0.1:8086", [], "is not the gateway's URL"),
    ("http://127.0.0.1:99999", [], "is not the gateway's URL"),
    ("ftp://127.0.0.1:21", [], "is not the gateway's URL"),
    (None, ["--spool-size", "-5G"], "is not a size"),
    (None, ["--attr-ttl", "nan"], "--attr-ttl"),
    (None, ["--timeout", "inf"], "--timeout"),
    (None, ["--uid", "-5"], "--uid"),
    (None, ["--gid", "99999999999"], "--gid"),
    (None, ["--log-file", "/no/such/dir/mount.log"], "--log-file"),
    (None, ["--statahead", "1000"], "--statahead"),
    (None, ["--statahead", "-1"], "--statahead"),
])
def test_mount_refuses_bad_arguments_in_one_line(fuse_gw, tmp_path, endpoint, args, says):
    (tmp_path / "m").mkdir()
    env = {**os.environ, "GATEWAY_ACCESS_KEY": fuse_gw.access_key, "GATEWAY_SECRET_KEY": fuse_gw.secret_key}
    result = subprocess.run([sys.executable, "-m", "gateway", "mount", endpoint or fuse_gw.endpoint,
                             str(tmp_path / "m"), *args], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.ismount(tmp_path / "m")


def test_fstab_helper_mounts_in_the_background(fuse_gw, bucket, tmp_path):
    config = tmp_path / "mount.toml"
    config.write_text(f'access_key = "{fuse_gw.access_key}"\nsecret_key = "{fuse_gw.secret_key}"\n')
    target = tmp_path / "m"
    target.mkdir()
    helper = os.path.join(os.path.dirname(sys.executable), "mount.gateway")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    try:
        result = subprocess.run(
            [helper, fuse_gw.endpoint, str(target), "-o",
             f"rw,_netdev,nofail,x-systemd.automount,config={config},attr_ttl=1,uid=2000,log_file={tmp_path}/log"],
            capture_output=True, text=True, env=env, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(target)  # the helper returns once the mount is up
        assert bucket in os.listdir(target)
        assert os.stat(target / bucket).st_uid == 2000
    finally:
        unmount(target)
    assert not os.path.ismount(target)


def test_a_background_mount_from_a_cluster_nodes_shell_with_a_relative_spool_writes(fuse_gw, bucket, tmp_path):
    """From the shell of README "Run a cluster" (GATEWAY_REGISTRY and the cluster secret exported, no
    GATEWAY_INSECURE_PEERS), `gateway mount` refused to start over a cluster node's checks; and a
    relative --spool-dir named another place once the mount went to the background: every write
    failed with ENOENT, leaving empty objects behind."""
    target = tmp_path / "m"
    target.mkdir()
    (tmp_path / "relspool").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_ACCESS_KEY": fuse_gw.access_key, "GATEWAY_SECRET_KEY": fuse_gw.secret_key,
                "GATEWAY_REGISTRY": f"sqlite:///{tmp_path}/registry.db",
                "GATEWAY_CLUSTER_SECRET": "0123456789abcdef0123456789abcdef"})
    try:
        result = subprocess.run([sys.executable, "-m", "gateway", "mount", fuse_gw.endpoint, "m", "--spool-dir",
                                 "relspool", "--log-file", str(tmp_path / "mount.log")],
                                capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(target)
        (target / bucket / "written.txt").write_bytes(b"through a relative spool")
        assert (target / bucket / "written.txt").read_bytes() == b"through a relative spool"
    finally:
        unmount(target)
    got = fuse_gw.client().get_object(Bucket=bucket, Key="written.txt")["Body"].read()
    assert got == b"through a relative spool"


@pytest.mark.parametrize("keys", ["wrong", "none"])
def test_fstab_helper_says_where_the_keys_come_from(fuse_gw, tmp_path, keys):
    """A mount at boot has no GATEWAY_* variables: its keys are in the config= file. Refused keys said
    only "Check --access-key/--secret-key (GATEWAY_...)", and missing ones offered serve's allow_anonymous."""
    config = tmp_path / "mount.toml"
    config.write_text(f'access_key = "{fuse_gw.access_key}"\nsecret_key = "wrong-secret-key-000"\n')
    target = tmp_path / "m"
    target.mkdir()
    helper = os.path.join(os.path.dirname(sys.executable), "mount.gateway")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    options = f"_netdev,config={config}" if keys == "wrong" else "_netdev"
    result = subprocess.run([helper, fuse_gw.endpoint, str(target), "-o", options], capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    assert result.returncode == (32 if keys == "wrong" else 2), result.stderr
    assert "config=FILE among the options of an /etc/fstab line" in result.stderr, result.stderr
    assert "allow_anonymous" not in result.stderr and "Traceback" not in result.stderr
    assert not os.path.ismount(target)


def test_fstab_option_parsing():
    args, fake, verbose = mount_args(["http://h:1", "/mnt", "-fv", "-o", "ro,allow_other,umask=027,noatime,_netdev"])
    assert args == ["mount", "http://h:1", "/mnt", "--read-only", "--allow-other", "--umask", "027"]
    assert fake and verbose
    assert mount_args(["http://h:1", "/mnt", "-o", "statahead=0"])[0][-2:] == ["--statahead", "0"]
    with pytest.raises(UsageError, match="unknown mount option"):
        mount_args(["http://h:1", "/mnt", "-o", "colour=blue"])
    assert mount_args(["http://h:1", "/mnt", "-s", "-o", "colour=blue"])[0] == ["mount", "http://h:1", "/mnt"]
    with pytest.raises(UsageError):
        mount_args(["/mnt"])


def test_fstab_helper_help(capsys):
    from gateway.fuse.fstab import main

    main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: mount.gateway ENDPOINT MOUNTPOINT") and "allow_other" in out


def test_stats_file_counts_requests(mnt, bucket):
    before = json.loads((mnt.path / ".cv-gateway-stats").read_text())
    sh("ls -l", cwd=mnt.path / bucket)
    after = json.loads((mnt.path / ".cv-gateway-stats").read_text())
    assert after["requests"].get("LIST", 0) > before["requests"].get("LIST", 0)
    assert ".cv-gateway-stats" not in os.listdir(mnt.path)


def test_closing_a_read_only_file_sends_no_flush(mnt, bucket, fuse_gw):
    """Read-only opens set FOPEN_NOFLUSH (libfuse >= 3.11): their close() costs no FUSE round trip,
    one of five for a small file read. A writing handle still gets its FLUSH, which uploads.
    (With libfuse 2, FUSE_LIBRARY_NAME=fuse, every close sends one.)"""
    fuse_gw.client().put_object(Bucket=bucket, Key="ro.txt", Body=b"read me")
    stats = mnt.path / ".cv-gateway-stats"
    first = json.loads(stats.read_text())
    before = first["flush_requests"]
    for _ in range(5):
        assert (mnt.path / bucket / "ro.txt").read_bytes() == b"read me"
    after = json.loads(stats.read_text())["flush_requests"]
    major, minor = (int(part) for part in first["libfuse"].split("."))
    assert after == before if (major, minor) >= (3, 11) else after >= before + 5
    (mnt.path / bucket / "rw.txt").write_bytes(b"written")  # open for writing, write, close
    assert json.loads(stats.read_text())["flush_requests"] > before
    assert fuse_gw.client().get_object(Bucket=bucket, Key="rw.txt")["Body"].read() == b"written"


def test_worker_threads_keep_their_python_thread_state(mount_factory, fuse_gw, bucket):
    """Each FUSE callback runs on a libfuse worker thread; its Python thread state is made once per
    thread and kept (operations._keep_thread_state), not made and destroyed per callback, which
    cost a 16 KiB mmap + munmap (a TLB flush on every core) each time. A kept thread state keeps
    its thread-local data: the count of thread states made stays near the number of worker
    threads while hundreds of callbacks run, several at once."""
    client = fuse_gw.client()
    for n in range(60):
        client.put_object(Bucket=bucket, Key=f"f{n:03d}", Body=b"x" * 3000)
    mount = mount_factory()
    base = mount.path / bucket

    def read_some(first: int) -> None:
        for n in range(first, 60, 4):
            assert (base / f"f{n:03d}").read_bytes() == b"x" * 3000

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(read_some, range(4)))
    for n in range(60):  # and once more, one at a time: lookups are cached now, reads are not
        assert (base / f"f{n:03d}").read_bytes() == b"x" * 3000
    stats = json.loads((mount.path / ".cv-gateway-stats").read_text())
    threads = len(os.listdir(f"/proc/{mount.process.pid}/task"))
    # 120 files opened, read and closed: some 500 callbacks; each would count without the fix.
    assert 1 <= stats["python_thread_states"] <= threads, (stats, threads)
