"""What a third-party plugin author meets when something in the plugin is wrong.

Each plugin here is a real installed distribution (a .dist-info with its
entry points, on PYTHONPATH) loaded by a real `gateway` process; S3 answers
come from a real `gateway serve` through boto3.
"""

from __future__ import annotations

import os
import subprocess
import sys

import botocore.exceptions
import pytest

from gateway import plugins
from gateway.testing.server import GatewayProcess


def install(tmp_path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Install distribution ``dist`` (version 1.0) with ``entry_points`` (plugin name -> module) and
    ``modules`` (module name -> source) into ``tmp_path``, which env() puts on the path."""
    info = tmp_path / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{plugins.GROUP}]\n{lines}")
    for module, source in modules.items():
        (tmp_path / f"{module}.py").write_text(source)


def env(tmp_path, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {**clean, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **extra}


def gateway(tmp_path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          env=env(tmp_path, **extra), cwd=tmp_path, timeout=60)


def serve_check(tmp_path, config: str) -> subprocess.CompletedProcess:
    """`gateway serve --print-config` with ``config``: everything start-up checks, without serving."""
    path = tmp_path / "gateway.toml"
    path.write_text(config)
    return gateway(tmp_path, "serve", "--print-config", "--config", str(path), "--access-key", "a",
                   "--secret-key", "b" * 16)


def one_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    return out.stderr


MEMORY_HOOK = ("from gateway.hookspecs import hookimpl\nfrom gateway_plugins.memory import MemoryBackend\n\n"
               "class {cls}(MemoryBackend):\n    pass\n\n"
               "@hookimpl\ndef register_backends(register):\n    register({type!r}, {cls})\n")


def test_two_distributions_with_one_plugin_name_are_both_named(tmp_path):
    """An author who copies the example plugin and keeps its entry point name: the second plugin of that
    name was skipped without a word, and a config using its backend type said only 'unknown backend type'."""
    install(tmp_path, "first-plugin", {"twin": "twin_one"}, {"twin_one": MEMORY_HOOK.format(cls="One", type="one")})
    install(tmp_path, "second-plugin", {"twin": "twin_two"}, {"twin_two": MEMORY_HOOK.format(cls="Two", type="two")})
    for out in (gateway(tmp_path, "plugins", "list"),
                serve_check(tmp_path, 'default_backend = "t"\n[backends.t]\ntype = "two"\n')):
        line = one_line(out)
        assert "two plugins are called 'twin'" in line, line
        assert "twin_one from first-plugin 1.0" in line and "twin_two from second-plugin 1.0" in line, line
        assert "Rename the entry point" in line, line


def test_two_entry_points_naming_one_module_are_both_named(tmp_path):
    """A copy of the example plugin with the distribution and entry point renamed but not its package:
    pluggy's own ValueError came out, with the repr of every plugin loaded."""
    install(tmp_path, "first-plugin", {"flat": "flat_backend"},
            {"flat_backend": MEMORY_HOOK.format(cls="Flat", type="flat")})
    install(tmp_path, "copied-plugin", {"my-flat": "flat_backend"}, {})
    line = one_line(gateway(tmp_path, "plugins", "list"))
    assert "names the module flat_backend, which plugin" in line, line
    assert "rename its package too" in line and "GATEWAY_DISABLE_PLUGINS=" in line, line


@pytest.mark.parametrize("error", ["RuntimeError('constructor exploded')", "KeyError('root')"])
def test_a_backend_whose_constructor_fails_is_named_in_one_line(tmp_path, error):
    install(tmp_path, "bad-plugin", {"bad": "bad_backend"}, {"bad_backend": (
        "from gateway.hookspecs import hookimpl\nfrom gateway_plugins.memory import MemoryBackend\n\n"
        f"class Bad(MemoryBackend):\n    def __init__(self, name, **options):\n        raise {error}\n\n"
        "@hookimpl\ndef register_backends(register):\n    register('bad', Bad)\n")})
    for out in (serve_check(tmp_path, 'default_backend = "broken"\n[backends.broken]\ntype = "bad"\n'),):
        line = one_line(out)
        assert "backend 'broken' (type 'bad') could not be created" in line, line
        assert error.split("(")[0] in line, line


def test_a_plugin_named_like_a_built_in_is_refused(tmp_path):
    install(tmp_path, "shadow-plugin", {"memory": "shadow_hooks"},
            {"shadow_hooks": MEMORY_HOOK.format(cls="Shadow", type="shadow")})
    line = one_line(gateway(tmp_path, "plugins", "list"))
    assert "two plugins are called 'memory'" in line and "shadow_hooks from shadow-plugin 1.0" in line, line
    assert "of shadow-plugin's pyproject.toml" in line, line


HOOK = "from gateway.hookspecs import hookimpl\nfrom gateway_plugins.memory import MemoryBackend\n\n"
ABSTRACT = ("from gateway.backend import Backend\n\nclass Half(Backend):\n"
            "    async def create_bucket(self, bucket):\n        pass\n\n")


@pytest.mark.parametrize("source, says", [
    (HOOK + "@hookimpl\ndef register_backends(register):\n    return {'mine': MemoryBackend}\n",
     "returns {'mine': <class 'gateway_plugins.memory.MemoryBackend'>} from its register_backends hook, which "
     "registers nothing: call register(type_name, BackendClass)"),
    (HOOK + "@hookimpl\nasync def register_backends(register):\n    register('mine', MemoryBackend)\n",
     "its register_backends hook is an async function; the gateway calls hooks as plain functions"),
    (HOOK + "@hookimpl\ndef register_backends(register):\n    register('mine', MemoryBackend)\n\n"
            "@hookimpl\nasync def on_object_written(bucket, key, info):\n    pass\n",
     "its on_object_written hook is an async function"),
    (HOOK + ABSTRACT + "@hookimpl\ndef register_backends(register):\n    register('mine', Half)\n",
     "registers backend type 'mine' as faulty_hooks.Half, which does not implement the abstract methods of "
     "gateway.backend.Backend: delete, delete_bucket, get, head, head_bucket, list, list_buckets, put"),
    (HOOK + "class Mine(MemoryBackend):\n    def __init__(self, root='.'):\n        super().__init__('mine')\n\n"
            "@hookimpl\ndef register_backends(register):\n    register('mine', Mine)\n",
     "registers backend type 'mine' as faulty_hooks.Mine, whose __init__ does not take name="),
], ids=["returns-the-types", "async-register", "async-event-hook", "abstract-class", "init-without-name"])
def test_a_hook_that_would_quietly_register_nothing_usable_names_the_plugin(tmp_path, source, says):
    """Mistakes that used to load without a word: a hook returning the types (or an async one, never
    awaited) left the type 'unknown'; a class missing abstract methods, or whose __init__ takes no name=,
    failed only once configured, with a Python TypeError blamed on the config section."""
    install(tmp_path, "faulty-plugin", {"faulty": "faulty_hooks"}, {"faulty_hooks": source})
    for out in (gateway(tmp_path, "plugins", "list"),
                serve_check(tmp_path, 'default_backend = "m"\n[backends.m]\ntype = "mine"\n')):
        line = one_line(out)
        assert "plugin 'faulty' (faulty_hooks from faulty-plugin 1.0)" in line and says in line, line
        assert "GATEWAY_DISABLE_PLUGINS=faulty" in line, line
    assert gateway(tmp_path, "plugins", "list", GATEWAY_DISABLE_PLUGINS="faulty").returncode == 0


def test_an_event_hook_that_raises_does_not_fail_the_request_it_reports_on(tmp_path):
    """on_object_written / on_object_deleted run after the object was stored or deleted: one that raised
    made the PUT or DELETE answer 500 InternalError (and skipped the other plugins' hooks), so a client
    retried or reported a failed write of a stored object. Now the client gets the success that happened,
    every other plugin still hears of it, and the log names the plugin whose hook failed."""
    events = tmp_path / "events.txt"
    install(tmp_path, "noisy-plugin", {"noisy": "noisy_hooks"}, {"noisy_hooks": (
        "from gateway.hookspecs import hookimpl\n\n"
        "@hookimpl\ndef on_object_written(bucket, key, info):\n    raise RuntimeError('webhook endpoint down')\n\n"
        "@hookimpl\ndef on_object_deleted(bucket, key):\n    raise RuntimeError('webhook endpoint down')\n")})
    install(tmp_path, "audit-plugin", {"audit": "audit_hooks"}, {"audit_hooks": (
        "from gateway.hookspecs import hookimpl\n\n"
        f"def note(line):\n    with open({str(events)!r}, 'a') as f:\n        f.write(line + '\\n')\n\n"
        "@hookimpl\ndef on_object_written(bucket, key, info):\n    note(f'written {bucket}/{key} {info.size}')\n\n"
        "@hookimpl\ndef on_object_deleted(bucket, key):\n    note(f'deleted {bucket}/{key}')\n")})
    with GatewayProcess(tmp_path / "cv", env=env(tmp_path)) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="events")
        s3.put_object(Bucket="events", Key="k", Body=b"stored")
        assert s3.get_object(Bucket="events", Key="k")["Body"].read() == b"stored"
        s3.copy_object(Bucket="events", Key="copy", CopySource={"Bucket": "events", "Key": "k"})
        s3.delete_object(Bucket="events", Key="k")
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="events")["Contents"]] == ["copy"]
        log = gw.log()
    assert events.read_text().splitlines() == ["written events/k 6", "written events/copy 6", "deleted events/k"]
    assert "plugin 'noisy': its on_object_written hook failed" in log, log
    assert "plugin 'noisy': its on_object_deleted hook failed" in log, log
    assert "RuntimeError: webhook endpoint down" in log and "GATEWAY_DISABLE_PLUGINS=noisy" in log, log


# Subtly broken backends a plugin author could write; each passed the whole conformance suite.
BROKEN = {
    "lists-a-wrong-last-modified": ("""
class Broken(MemoryBackend):
    capabilities = dataclasses.replace(MemoryBackend.capabilities, listing_metadata=False)

    async def list(self, *args, **kwargs):
        page = await super().list(*args, **kwargs)
        page.objects = [dataclasses.replace(o, last_modified=0.0) for o in page.objects]  # forgot to store it
        return page
""", "test_listing_describes_objects_as_head_does"),
    "normalizes-keys": ("""
class Broken(MemoryBackend):  # as a store on APFS or HFS+ does with names
    async def put(self, bucket, key, payload, meta):
        info = await super().put(bucket, unicodedata.normalize("NFC", key), payload, meta)
        return dataclasses.replace(info, key=key)

    async def get(self, bucket, key, byte_range=None):
        return await super().get(bucket, unicodedata.normalize("NFC", key), byte_range)

    async def head(self, bucket, key):
        return await super().head(bucket, unicodedata.normalize("NFC", key))

    async def delete(self, bucket, key):
        await super().delete(bucket, unicodedata.normalize("NFC", key))
""", "test_keys_that_differ_only_in_unicode_normalization"),
    "temp-name-from-the-key": ("""
class Broken(FlatFileBackend):
    async def put(self, bucket, key, payload, meta):
        self._check_bucket(bucket)
        data_path, meta_path = self._paths(bucket, key)
        tmp = data_path + ".tmp"  # one temporary file for every writer of the key
        with open(tmp, "wb") as f:
            async for chunk in payload:
                f.write(chunk)
        info = ObjectInfo(key, payload.size, payload.etag, time.time(), meta, payload.checksums)
        with open(tmp + ".json", "w") as f:
            json.dump({"key": key, "size": info.size, "etag": info.etag, "time": info.last_modified,
                       "meta": meta.to_json(), "checksums": dict(info.checksums)}, f)
        os.replace(tmp, data_path)
        os.replace(tmp + ".json", meta_path)
        return info
""", "test_concurrent_writes_of_one_key"),
    "gathers-the-body-before-writing": ("""
class Broken(FlatFileBackend):
    async def put(self, bucket, key, payload, meta):
        data = b"".join([chunk async for chunk in payload])  # the whole body in memory

        async def again():
            yield data

        return await super().put(bucket, key, Payload(again()), meta)
""", "test_large_put_streams_in_bounded_memory"),
    "reads-through-the-prefix-of-a-range": ("""
class Broken(FlatFileBackend):  # claims range_reads, but reads from byte 0 and drops what comes before
    async def get(self, bucket, key, byte_range=None):
        info = self._read_sidecar(bucket, key)
        start, stop = byte_range.resolve(info.size) if byte_range else (0, info.size)
        f = open(self._paths(bucket, key)[0], "rb")

        async def chunks():
            position = 0
            while position < stop:
                chunk = f.read(256 * 1024)
                low, high = max(start - position, 0), min(stop - position, len(chunk))
                if high > low:
                    yield chunk[low:high]
                position += len(chunk)

        return ObjectReader(info, start, stop, _chunks=chunks(), _close=f.close)
""", "test_range_read_skips_the_prefix"),
    "drops-empty-metadata-values": ("""
class Broken(MemoryBackend):
    async def put(self, bucket, key, payload, meta):
        kept = {name: value for name, value in meta.metadata.items() if value}
        return await super().put(bucket, key, payload, ObjectMeta(meta.content_type, kept, meta.headers))
""", "test_empty_and_punctuated_metadata_values_are_kept"),
    "packs-metadata-into-one-string": ("""
class Broken(MemoryBackend):  # as a store with one free-text attribute per object
    async def put(self, bucket, key, payload, meta):
        packed = ";".join(f"{name}={value}" for name, value in meta.metadata.items())
        unpacked = dict(item.split("=", 1) for item in packed.split(";") if "=" in item)
        return await super().put(bucket, key, payload, ObjectMeta(meta.content_type, unpacked, meta.headers))
""", "test_empty_and_punctuated_metadata_values_are_kept"),
    "server-side-copy-drops-meta-across-buckets": ("""
class Broken(MemoryBackend):
    async def copy(self, src_bucket, src_key, dst_bucket, dst_key, meta=None):
        if meta is None and src_bucket != dst_bucket:
            meta = ObjectMeta()  # the store's copy call takes no metadata across buckets
        return await super().copy(src_bucket, src_key, dst_bucket, dst_key, meta)
""", "test_copy_keeps_meta"),
    "keys-objects-by-key-alone": ("""
class Broken(MemoryBackend):  # buckets are checked, but every bucket's objects live in one table
    def __init__(self, name="memory", **options):
        super().__init__(name, **options)
        self._objects = {}

    def _bucket(self, bucket):
        super()._bucket(bucket)
        return self._objects if not bucket.startswith(".") else self._buckets[bucket][1]

    async def delete_bucket(self, bucket):
        if self._bucket(bucket):
            raise errors.BucketNotEmpty(BucketName=bucket)
        del self._buckets[bucket]
""", "test_buckets_are_separate_namespaces"),
    "dates-objects-when-asked": ("""
class Broken(MemoryBackend):  # forgot to store the time of the write
    async def head(self, bucket, key):
        return dataclasses.replace(await super().head(bucket, key), last_modified=time.time())
""", "test_last_modified_is_the_time_of_the_write"),
    "lists-with-sql-like": ("""
class Broken(MemoryBackend):  # as an index in SQLite would: WHERE key LIKE :prefix || '%' (ASCII only)
    async def list(self, bucket, prefix="", delimiter="", start_after="", max_keys=1000):
        import sqlite3
        store = self._bucket(bucket)
        db = sqlite3.connect(":memory:")
        db.execute("PRAGMA case_sensitive_like = ON")
        db.execute("CREATE TABLE k (key TEXT)")
        db.executemany("INSERT INTO k VALUES (?)", [(k,) for k in store])
        found = [k for (k,) in db.execute("SELECT key FROM k WHERE key LIKE ? || '%'", (prefix,))]
        ordered = sorted(found, key=str.encode)
        return paginate((store[k][0] for k in ordered), prefix="", delimiter=delimiter, start_after=start_after,
                        max_keys=max_keys) if not delimiter else paginate(
            (store[k][0] for k in ordered if k.startswith(prefix)), prefix, delimiter, start_after, max_keys)
""", "test_prefix_is_literal_text"),
}

SUITE = """
import dataclasses, json, os, time, unicodedata
import pytest
from gateway import errors
from gateway.backend import ObjectInfo, ObjectMeta, ObjectReader, paginate
from gateway.payload import Payload
from gateway.testing.conformance import BackendConformance
from gateway_example_backend.flatfile import FlatFileBackend
from gateway_plugins.memory import MemoryBackend
{source}

KIND = Broken if {broken} else Broken.__mro__[1]


async def started(root):
    backend = KIND(root=str(root)) if issubclass(KIND, FlatFileBackend) else KIND()
    await backend.start()
    return backend


class TestBroken(BackendConformance):
    @pytest.fixture
    async def backend(self, tmp_path):
        backend = await started(tmp_path / "store")
        yield backend
        await backend.close()

    @pytest.fixture
    def reopen(self, tmp_path):
        return (lambda: started(tmp_path / "store")) if issubclass(KIND, FlatFileBackend) else None
"""


@pytest.mark.parametrize("mistake", sorted(BROKEN))
def test_the_conformance_suite_catches_a_subtly_broken_backend(tmp_path, mistake):
    """A plugin author's backend with one of these bugs passed every conformance test; the test named
    for each now fails it, and passes the same backend without the bug."""
    source, test = BROKEN[mistake]
    for broken in (True, False):
        module = tmp_path / f"test_{'broken' if broken else 'fixed'}.py"
        module.write_text(SUITE.format(source=source, broken=broken))
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module),
                              "-k", test, "--rootdir", str(tmp_path)], capture_output=True, text=True,
                             cwd=tmp_path, timeout=300)
        if broken:
            assert out.returncode == 1 and "1 failed" in out.stdout, out.stdout[-3000:]
        else:
            assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout[-3000:]


def test_a_plugin_that_runs_a_program_when_imported_is_named(tmp_path):
    """An entry point naming a module that parses the command line at import (a tool's main module):
    `gateway plugins list` printed that tool's argparse usage, 'error: unrecognized arguments: list',
    and exited 2 as if the gateway's own command line were wrong."""
    install(tmp_path, "tool-plugin", {"tool": "tool_main"}, {"tool_main": (
        "import argparse\nparser = argparse.ArgumentParser()\nparser.add_argument('root')\nparser.parse_args()\n")})
    for out in (gateway(tmp_path, "plugins", "list"),
                serve_check(tmp_path, 'default_backend = "m"\n[backends.m]\ntype = "memory"\n')):
        line = one_line(out)
        assert "plugin 'tool' (tool_main from tool-plugin 1.0) cannot be loaded: importing tool_main called " \
               "sys.exit(2) after printing: " in line, line
        assert "if __name__ == '__main__'" in line and "GATEWAY_DISABLE_PLUGINS=tool" in line, line
        assert "usage:" not in line, line


FAULTY_BACKEND = """
from gateway import errors
from gateway.hookspecs import hookimpl
from gateway_example_backend.flatfile import FlatFileBackend


class StoreLibraryError(Exception):
    '''What a storage library raises: the plugin forgot to translate it.'''


class Faulty(FlatFileBackend):
    async def put(self, bucket, key, payload, meta):
        if key.startswith("fail-midway") and (payload.expected_size or 0) > 1024 * 1024:
            seen = 0
            async for chunk in payload:  # sent on to the store, which goes away a MiB in
                seen += len(chunk)
                if seen > 1024 * 1024:
                    raise StoreLibraryError("connection to the store lost")
        if key == "store-down":
            raise errors.BackendUnavailable("backend 'f' (faulty): the store did not answer within 5 s")
        return await super().put(bucket, key, payload, meta)

    async def get(self, bucket, key, byte_range=None):
        reader = await super().get(bucket, key, byte_range)
        if key == "breaks-while-read":
            inner = reader._chunks

            async def breaking():
                async for chunk in inner:
                    yield chunk[:64 * 1024]
                    raise StoreLibraryError("read failed in the middle")
            reader._chunks = breaking()
        return reader

    async def list(self, bucket, prefix="", delimiter="", start_after="", max_keys=1000):
        if prefix == "unlistable":
            raise StoreLibraryError("listing failed")
        return await super().list(bucket, prefix, delimiter, start_after, max_keys)


@hookimpl
def register_backends(register):
    register("faulty", Faulty)
"""


def test_what_an_s3_client_sees_when_a_backend_raises_a_library_exception(tmp_path):
    """A backend that lets its library's exceptions through: the client gets an S3 XML error (500
    InternalError, or 503 for BackendUnavailable), never a hang; a failed write stores nothing and
    keeps the old version; a read that breaks after the headers ends the connection short of the
    Content-Length, so the SDK reports it instead of returning a short object."""
    install(tmp_path, "faulty-plugin", {"faulty": "faulty_backend"}, {"faulty_backend": FAULTY_BACKEND})
    config = f'default_backend = "f"\n[backends.f]\ntype = "faulty"\nroot = "{tmp_path / "store"}"\n'
    with GatewayProcess(tmp_path / "cv", config=config, env=env(tmp_path)) as gw:
        s3 = gw.client(read_timeout=30)
        s3.create_bucket(Bucket="faults")
        s3.put_object(Bucket="faults", Key="fail-midway", Body=b"old version")  # under 1 MiB: stored
        for key in ("fail-midway", "fail-midway-new"):
            with pytest.raises(botocore.exceptions.ClientError) as failed:
                s3.put_object(Bucket="faults", Key=key, Body=b"n" * (3 * 1024 * 1024))
            error = failed.value.response["Error"]
            assert (failed.value.response["ResponseMetadata"]["HTTPStatusCode"], error["Code"]) == (500, "InternalError")
            assert "request id" in error["Message"]
        assert s3.get_object(Bucket="faults", Key="fail-midway")["Body"].read() == b"old version"
        with pytest.raises(botocore.exceptions.ClientError) as missing:
            s3.head_object(Bucket="faults", Key="fail-midway-new")
        assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        with pytest.raises(botocore.exceptions.ClientError) as down:
            s3.put_object(Bucket="faults", Key="store-down", Body=b"x")
        assert down.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert down.value.response["ResponseMetadata"]["HTTPHeaders"].get("retry-after") == "5"  # every 503 says when
        assert "did not answer within 5 s" in down.value.response["Error"]["Message"]
        with pytest.raises(botocore.exceptions.ClientError) as unlistable:
            s3.list_objects_v2(Bucket="faults", Prefix="unlistable")
        assert unlistable.value.response["Error"]["Code"] == "InternalError"
        s3.put_object(Bucket="faults", Key="breaks-while-read", Body=b"r" * (3 * 1024 * 1024))
        body = s3.get_object(Bucket="faults", Key="breaks-while-read")["Body"]
        with pytest.raises(botocore.exceptions.ResponseStreamingError, match="IncompleteRead"):
            body.read()
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="faults")["Contents"]] == [
            "breaks-while-read", "fail-midway"]
        log = gw.log()
    assert "StoreLibraryError: connection to the store lost" in log and "StoreLibraryError: listing failed" in log
    assert "StoreLibraryError: read failed in the middle" in log
    assert "Exception in ASGI application" not in log  # logged once, by the gateway, not again by uvicorn


def test_a_load_switch_naming_no_installed_plugin_is_reported(tmp_path):
    """A typo in GATEWAY_LOAD_PLUGINS did nothing without a word: the plugin meant to be loaded was not,
    and the config then said only 'unknown backend type'."""
    variable = "GATEWAY_LOAD_PLUGINS"
    install(tmp_path, "flat-plugin", {"my-flat": "my_flat_hooks"},
            {"my_flat_hooks": MEMORY_HOOK.format(cls="MyFlat", type="myflat")})
    out = gateway(tmp_path, "plugins", "list", **{variable: "my-falt"})
    assert out.returncode == 0, out.stderr
    assert f"{variable} names 'my-falt', which is not an installed third-party plugin" in out.stderr, out.stderr
    assert "my-flat" in out.stderr.split("those are:")[1], out.stderr
    quiet = gateway(tmp_path, "plugins", "list", **{variable: "my-flat"})
    assert quiet.returncode == 0 and "not an installed" not in quiet.stderr, quiet.stderr


FAILING_START = """
from gateway.hookspecs import hookimpl
from gateway_plugins.memory import MemoryBackend


class StoreDown(MemoryBackend):
    async def start(self):
        raise ConnectionRefusedError(111, "Connection refused")


class Unsure(MemoryBackend):
    async def check_writable(self):
        raise RuntimeError("the store's client is not connected")


@hookimpl
def register_backends(register):
    register("store-down", StoreDown)
    register("unsure", Unsure)
"""


def test_a_backend_whose_start_lets_a_library_exception_through_is_named(tmp_path):
    """serve said only "error: [Errno 111] Connection refused": which backend, of which plugin?"""
    install(tmp_path, "failing-plugin", {"failing": "failing_backend"}, {"failing_backend": FAILING_START})
    config = tmp_path / "gateway.toml"
    config.write_text('default_backend = "remote"\n[backends.remote]\ntype = "store-down"\n')
    from gateway.testing.server import free_port

    out = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(free_port()),
                          "--access-key", "a", "--secret-key", "b" * 16], capture_output=True, text=True,
                         env=env(tmp_path), cwd=tmp_path, timeout=60)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: backend 'remote' (StoreDown) could not start: ConnectionRefusedError:"), last
    assert "Connection refused" in last
    assert "Traceback" in out.stderr  # in the log, for the plugin's author


def test_a_check_writable_that_raises_a_library_exception_is_a_503_with_the_reason(tmp_path):
    """/readyz was a bare 500 "Internal Server Error": a load balancer learns nothing, nor does the operator."""
    import json
    import urllib.error
    import urllib.request

    install(tmp_path, "failing-plugin", {"failing": "failing_backend"}, {"failing_backend": FAILING_START})
    config = 'default_backend = "u"\n[backends.u]\ntype = "unsure"\n'
    with GatewayProcess(tmp_path / "cv", config=config, env=env(tmp_path)) as gw:
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(gw.endpoint + "/readyz", timeout=10)
        assert answer.value.code == 503
        body = json.loads(answer.value.read())
        assert body["ready"] is False
        assert body["backends"] == {"u": "RuntimeError: the store's client is not connected"}
        gw.client().create_bucket(Bucket="still-served")  # the gateway is up all the same
        log = gw.log()
    assert "check_writable failed" in log and "RuntimeError" in log


def test_a_registry_hook_that_returns_its_classes_is_named(tmp_path):
    source = ("from gateway.hookspecs import hookimpl\nfrom gateway.cluster.registry_sqlite import SqliteRegistry\n\n"
              "@hookimpl\ndef register_registries(register):\n    return {'mydb': SqliteRegistry}\n")
    install(tmp_path, "registry-plugin", {"myregistry": "my_registry"}, {"my_registry": source})
    out = gateway(tmp_path, "cluster", "status", "--registry", "mydb:///x")
    assert out.returncode != 0
    assert "plugin 'myregistry' returns {'mydb':" in out.stderr, out.stderr
    assert "call register(scheme, RegistryClass)" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_backend_raising_cancelled_error_of_its_own_is_an_s3_500(tmp_path):
    """A plugin that misuses an asyncio timeout raises CancelledError while the request's task is not
    being cancelled: the server answered a plain-text 500, without the S3 error document or request id."""
    install(tmp_path, "cancelling-plugin", {"cancelling": "cancelling_backend"}, {"cancelling_backend": (
        "import asyncio\nfrom gateway.hookspecs import hookimpl\nfrom gateway_plugins.memory import MemoryBackend\n\n"
        "class Cancelling(MemoryBackend):\n"
        "    async def get(self, bucket, key, byte_range=None):\n        raise asyncio.CancelledError()\n\n"
        "    async def list(self, *args, **kwargs):\n        raise asyncio.CancelledError()\n\n"
        "@hookimpl\ndef register_backends(register):\n    register('cancelling', Cancelling)\n")})
    config = 'default_backend = "c"\n[backends.c]\ntype = "cancelling"\n'
    with GatewayProcess(tmp_path / "unused", config=config, env=env(tmp_path)) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="cancels")
        s3.put_object(Bucket="cancels", Key="k", Body=b"x")
        for call in (lambda: s3.get_object(Bucket="cancels", Key="k"), lambda: s3.list_objects_v2(Bucket="cancels")):
            with pytest.raises(botocore.exceptions.ClientError) as info:
                call()
            assert info.value.response["Error"]["Code"] == "InternalError", info.value.response
            assert info.value.response["ResponseMetadata"]["HTTPHeaders"].get("x-amz-request-id")
        assert s3.head_object(Bucket="cancels", Key="k")["ContentLength"] == 1  # still up
