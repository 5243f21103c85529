"""GATEWAY_DISABLE_PLUGINS / GATEWAY_LOAD_PLUGINS, `gateway plugins list` and GET /_admin/plugins.

The example plugin (docs/example-plugin, installed by `make test`) is the
third-party plugin the switches act on; built-ins always load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from importlib import metadata

import pytest

from gateway import plugins
from gateway.testing.server import GatewayProcess

BUILTINS = {"local", "memory", "smb", "s3"}
EXAMPLE = "example-flatfile"


@pytest.fixture(autouse=True)
def example_installed():
    names = {ep.name for ep in metadata.entry_points(group=plugins.GROUP)}
    if EXAMPLE not in names:
        pytest.fail("the example plugin is not installed: run `make test-deps` "
                    "(it runs `pip install -e docs/example-plugin`)")


@pytest.fixture
def fresh_manager(monkeypatch):
    """Reload plugins under this test's environment, and forget them afterwards."""
    for name in ("GATEWAY_DISABLE_PLUGINS", "GATEWAY_LOAD_PLUGINS", "GATEWAY_TRACE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    plugins.reset_plugin_manager()
    yield monkeypatch
    plugins.reset_plugin_manager()


def loaded() -> set[str]:
    return {record.name for record in plugins.plugin_records()}


def test_everything_loads_by_default(fresh_manager):
    assert BUILTINS | {EXAMPLE} <= loaded()
    assert plugins.backend_classes()["flatfile"].__module__ == "gateway_example_backend.flatfile"


@pytest.mark.parametrize("value", [EXAMPLE, f" {EXAMPLE} , other", "*"])
def test_disable_plugins(fresh_manager, value):
    fresh_manager.setenv("GATEWAY_DISABLE_PLUGINS", value)
    names = loaded()
    assert EXAMPLE not in names
    assert BUILTINS <= names, "built-in backends must load whatever the switch says"
    assert "flatfile" not in plugins.backend_classes()


def test_load_only_the_named_plugins(fresh_manager):
    fresh_manager.setenv("GATEWAY_LOAD_PLUGINS", "nothing-by-this-name")
    assert EXAMPLE not in loaded() and BUILTINS <= loaded()
    plugins.reset_plugin_manager()
    fresh_manager.setenv("GATEWAY_LOAD_PLUGINS", EXAMPLE)
    assert EXAMPLE in loaded()


def test_disable_wins_over_load(fresh_manager):
    fresh_manager.setenv("GATEWAY_LOAD_PLUGINS", EXAMPLE)
    fresh_manager.setenv("GATEWAY_DISABLE_PLUGINS", EXAMPLE)
    assert EXAMPLE not in loaded()


def test_records_carry_versions_and_builtin_flag(fresh_manager):
    records = {r.name: r for r in plugins.plugin_records()}
    assert records[EXAMPLE].version == metadata.version("cv-gateway-example-backend")
    assert records[EXAMPLE].builtin is False
    assert all(records[name].builtin and records[name].version == metadata.version("cv-gateway")
               for name in BUILTINS)
    assert records["smb"].module == "gateway_plugins.smb"


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run([sys.executable, "-m", "gateway", *args], check=False, capture_output=True, text=True,
                          env={**clean, **env}, timeout=60)


def test_cli_plugins_list_table_and_json():
    table = _cli("plugins", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "BACKENDS", "MODULE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["smb"][1:] == [metadata.version("cv-gateway"), "smb", "gateway_plugins.smb"]
    assert rows["s3"][2:] == ["s3", "gateway_plugins.s3"]
    assert rows[EXAMPLE][1:] == ["0.1.0", "flatfile", "gateway_example_backend.flatfile"]
    as_json = json.loads(_cli("plugins", "list", "--json").stdout)
    by_name = {row["name"]: row for row in as_json}
    assert by_name[EXAMPLE] == {"name": EXAMPLE, "version": "0.1.0", "module": "gateway_example_backend.flatfile",
                                "builtin": False, "backends": ["flatfile"]}
    assert by_name["s3"]["backends"] == ["s3"] and by_name["s3"]["builtin"] is True


def test_cli_honours_the_switches():
    rows = json.loads(_cli("plugins", "list", "--json", GATEWAY_DISABLE_PLUGINS=EXAMPLE).stdout)
    assert EXAMPLE not in {row["name"] for row in rows} and BUILTINS <= {row["name"] for row in rows}


def test_admin_plugins_endpoint_and_disabled_backend_type(tmp_path):
    config = f'default_backend = "flat"\n\n[backends.flat]\ntype = "flatfile"\nroot = "{tmp_path / "flat"}"\n'
    with GatewayProcess(tmp_path / "unused", config=config) as gw:
        with urllib.request.urlopen(gw.endpoint + "/_admin/plugins", timeout=10) as response:
            listed = {row["name"]: row for row in json.load(response)}
        assert listed[EXAMPLE]["version"] == "0.1.0" and listed[EXAMPLE]["builtin"] is False
        assert BUILTINS <= set(listed)
        s3 = gw.client()
        s3.create_bucket(Bucket="flat-bucket")
        s3.put_object(Bucket="flat-bucket", Key="k", Body=b"through the example plugin")
        assert s3.get_object(Bucket="flat-bucket", Key="k")["Body"].read() == b"through the example plugin"
    path = tmp_path / "flat.toml"
    path.write_text(config)
    refused = _cli("serve", "--config", str(path), "--access-key", "k", "--secret-key", "s" * 20,
                   GATEWAY_DISABLE_PLUGINS=EXAMPLE)
    assert refused.returncode != 0
    assert "unknown backend type 'flatfile'" in refused.stderr, refused.stderr


def test_a_plugin_that_cannot_be_imported_is_named_with_the_way_to_skip_it(tmp_path):
    """A broken third-party plugin (its module is gone, it fails on import) stops `plugins list` and
    `serve` with one line naming it and GATEWAY_DISABLE_PLUGINS, not an import traceback."""
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{plugins.GROUP}]\nbroken = no_such_module_xyz\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("GATEWAY_DISABLE_PLUGINS", None)
    for args in (["plugins", "list"], ["serve", "--access-key", "a", "--secret-key", "b",
                                       "--data-dir", str(tmp_path / "cv"), "--port", "1"]):
        out = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=env,
                             timeout=60)
        assert out.returncode == 2, (args, out.stderr)
        assert "plugin 'broken' (no_such_module_xyz from broken-plugin 1.0) cannot be loaded" in out.stderr
        assert "GATEWAY_DISABLE_PLUGINS=broken" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "gateway", "plugins", "list"], capture_output=True, text=True,
                         env={**env, "GATEWAY_DISABLE_PLUGINS": "broken"}, timeout=60)
    assert out.returncode == 0 and "local" in out.stdout


def test_without_the_smb_extra_the_gateway_still_starts_and_an_smb_backend_says_what_to_install(tmp_path):
    """`make run` installs the core only: the built-in smb plugin must load without smbprotocol (it
    stopped every `gateway serve` on a fresh clone), and only a configured smb backend is refused."""
    shim = tmp_path / "shim"
    for name in ("smbclient", "smbprotocol"):
        (shim / name).mkdir(parents=True)
        (shim / name / "__init__.py").write_text(f"raise ImportError(\"No module named '{name}'\")\n")
    env = {**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    base = [sys.executable, "-m", "gateway", "serve", "--print-config", "--data-dir", str(tmp_path / "data"),
            "--access-key", "k", "--secret-key", "s" * 16]
    plain = subprocess.run(base, capture_output=True, text=True, timeout=60, env=env)
    assert plain.returncode == 0, plain.stderr
    listed = subprocess.run([sys.executable, "-m", "gateway", "plugins", "list"], capture_output=True, text=True,
                            timeout=60, env=env)
    assert listed.returncode == 0 and "smb" in listed.stdout, listed.stderr
    config = tmp_path / "smb.toml"
    config.write_text('default_backend = "nas"\n[backends.nas]\ntype = "smb"\nserver = "127.0.0.1"\n'
                      'share = "s"\nuser = "u"\npassword = "p"\n')
    refused = subprocess.run(base + ["--config", str(config)], capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode != 0
    assert "pip install 'cv-gateway[smb]'" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr


def _third_party_plugin(tmp_path, name: str, modules: dict[str, str], entry: str) -> dict[str, str]:
    """Install plugin ``name`` (a .dist-info and its modules in tmp_path) and return the env that sees it."""
    dist = tmp_path / f"{name}_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{plugins.GROUP}]\n{name} = {entry}\n")
    for module, source in modules.items():
        (tmp_path / f"{module}.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {**env, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_plugins_list_shows_a_backend_type_under_the_plugin_that_registers_it(tmp_path):
    """The hookimpl module need not define the backend class (a package with plugin.py and backend.py):
    the BACKENDS column showed '-' for such a plugin, as if it registered nothing."""
    env = _third_party_plugin(tmp_path, "split", {
        "split_backend": "from gateway_plugins.memory import MemoryBackend\n\n"
                         "class SplitBackend(MemoryBackend):\n    pass\n",
        "split_hooks": "from gateway.hookspecs import hookimpl\nfrom split_backend import SplitBackend\n\n"
                       "@hookimpl\ndef register_backends(register):\n    register('split', SplitBackend)\n",
    }, "split_hooks")
    out = subprocess.run([sys.executable, "-m", "gateway", "plugins", "list", "--json"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert rows["split"]["backends"] == ["split"] and rows["split"]["module"] == "split_hooks"
    assert rows["memory"]["backends"] == ["memory"]
    table = subprocess.run([sys.executable, "-m", "gateway", "plugins", "list"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert [line.split() for line in table.stdout.splitlines() if line.startswith("split ")] == [
        ["split", "1.0", "split", "split_hooks"]]


HOOK = "from gateway.hookspecs import hookimpl\nfrom gateway_plugins.memory import MemoryBackend\n\n@hookimpl\n"


@pytest.mark.parametrize("source, says", [
    (HOOK + "def register_backends(reg):\n    pass\n", "register_backends(reg)"),
    (HOOK + "def register_backend(register):\n    pass\n", "unknown hook 'register_backend'"),
    (HOOK + "def register_backends(register):\n    raise RuntimeError('no licence file')\n",
     "fails in its register_backends hook: RuntimeError: no licence file"),
    (HOOK + "def register_backends(register):\n    register('thing', MemoryBackend())\n",
     "registers backend type 'thing' as <gateway_plugins.memory.MemoryBackend object"),
    (HOOK + "def register_backends(register):\n    class Local(MemoryBackend):\n        pass\n"
            "    register('local', Local)\n",
     "plugins 'local' and 'faulty' both register a backend type called 'local'"),
], ids=["hookimpl-argument", "misspelled-hook", "hook-raises", "not-a-class", "built-in-type"])
def test_a_plugin_with_broken_hooks_is_named_in_one_line_with_the_way_to_skip_it(tmp_path, source, says):
    """Past the import, a plugin's hooks can still be wrong: serve and plugins list then stop with one
    line naming the plugin, what is wrong and GATEWAY_DISABLE_PLUGINS, not a traceback through pluggy."""
    env = _third_party_plugin(tmp_path, "faulty", {"faulty_hooks": source}, "faulty_hooks")
    for args in (["plugins", "list"], ["serve", "--print-config", "--access-key", "a", "--secret-key", "b" * 16,
                                       "--data-dir", str(tmp_path / "cv")]):
        out = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=env,
                             timeout=60)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "'faulty'" in out.stderr and says in out.stderr, out.stderr
        assert "GATEWAY_DISABLE_PLUGINS=faulty" in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "gateway", "plugins", "list"], capture_output=True, text=True,
                         env={**env, "GATEWAY_DISABLE_PLUGINS": "faulty"}, timeout=60)
    assert out.returncode == 0 and "memory" in out.stdout, out.stderr
