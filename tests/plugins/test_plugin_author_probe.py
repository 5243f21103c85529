"""What a third-party plugin author meets when something in the plugin is wrong.

Each plugin here is a real installed distribution (a .dist-info with its
entry points, on PYTHONPATH) loaded by a real `gateway` process; S3 answers
come from a real `gateway serve` through boto3.
"""

from __future__ import annotations

import os
import subprocess
import sys

from gateway import plugins


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
                          env=env(tmp_path, **extra), timeout=60)


def serve_check(tmp_path, config: str) -> subprocess.CompletedProcess:
    """`gateway serve --print-config` with ``config``: everything start-up checks, without serving."""
    path = tmp_path / "gateway.toml"
    path.write_text(config)
    return gateway(tmp_path, "serve", "--print-config", "--config", str(path), "--access-key", "a",
                   "--secret-key", "b" * 16, "--data-dir", str(tmp_path / "cv"))


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


def test_a_plugin_named_like_a_built_in_is_refused(tmp_path):
    install(tmp_path, "shadow-plugin", {"memory": "shadow_hooks"},
            {"shadow_hooks": MEMORY_HOOK.format(cls="Shadow", type="shadow")})
    line = one_line(gateway(tmp_path, "plugins", "list"))
    assert "two plugins are called 'memory'" in line and "shadow_hooks from shadow-plugin 1.0" in line, line
    assert "of shadow-plugin's pyproject.toml" in line, line
