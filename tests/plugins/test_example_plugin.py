"""The out-of-tree path: docs/example-plugin is a separate package, installed like any third-party plugin.

Its own tests (docs/example-plugin/tests, collected through testpaths) run
the conformance suite; here we check the package is wired as docs/plugins.md
says: its own distribution, one entry point, found without touching the gateway.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from gateway import plugins

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "docs" / "example-plugin"


def test_example_plugin_is_installed_from_its_own_package():
    try:
        dist = metadata.distribution("cv-gateway-example-backend")
    except metadata.PackageNotFoundError:
        pytest.fail("the example plugin is not installed: run `make test-deps`")
    entry_points = [ep for ep in dist.entry_points if ep.group == plugins.GROUP]
    assert [(ep.name, ep.value) for ep in entry_points] == [("example-flatfile", "gateway_example_backend.flatfile")]
    project = tomllib.loads((EXAMPLE_DIR / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["gateway.backends"] == {
        "example-flatfile": "gateway_example_backend.flatfile"}
    assert dist.version == project["project"]["version"]


def test_example_test_file_subclasses_the_conformance_suite():
    source = (EXAMPLE_DIR / "tests" / "test_flatfile.py").read_text()
    assert "class TestFlatFileBackend(BackendConformance)" in source
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "docs/example-plugin/tests" in pyproject["tool"]["pytest"]["ini_options"]["testpaths"]


def test_example_backend_registers_through_the_hook():
    plugins.reset_plugin_manager()
    try:
        classes = plugins.backend_classes()
        assert classes["flatfile"].__name__ == "FlatFileBackend"
    finally:
        plugins.reset_plugin_manager()
