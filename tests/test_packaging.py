"""The installed package holds every module of the checkout: pyproject.toml names its packages one by
one (plugins/ is installed as gateway_plugins), and a package split out of a module was left out of
it, so an install from a wheel or a plain `pip install .` could not start (`make` installs editable,
which hid it)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_of_the_checkout_is_installed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = set()
    for name, directory in setuptools["package-dir"].items():
        for marker in (ROOT / directory).rglob("__init__.py"):
            relative = marker.parent.relative_to(ROOT / directory)
            found.add(".".join((name, *relative.parts)))
    assert found - listed == set(), f"packages missing from [tool.setuptools] packages: {sorted(found - listed)}"
    assert listed - found == set(), f"listed packages that do not exist: {sorted(listed - found)}"


def test_no_module_lives_outside_a_package():
    """A directory of modules without __init__.py would be left out of the install silently."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for directory in setuptools["package-dir"].values():
        for module in (ROOT / directory).rglob("*.py"):
            assert (module.parent / "__init__.py").exists(), f"{module} is in no package: add an __init__.py"
