"""The one plugin manager: loaded lazily, once, from entry points.

Switches (read when plugins are first loaded):

- ``GATEWAY_DISABLE_PLUGINS=a,b`` skips those entry points (``*`` skips every
  third-party one; built-ins always load, the gateway needs them).
- ``GATEWAY_LOAD_PLUGINS=a,b`` loads only those entry points (plus built-ins).
- ``GATEWAY_TRACE_PLUGINS=1`` logs every hook call.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import metadata

import pluggy

from . import hookspecs

GROUP = "gateway.backends"
# The distribution that ships the built-in backends (this package).
BUILTIN_DIST = "cv-gateway"
log = logging.getLogger(__name__)

_manager: pluggy.PluginManager | None = None


@dataclass(frozen=True)
class PluginRecord:
    name: str
    version: str
    module: str
    builtin: bool


def _names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _builtin(entry_point: metadata.EntryPoint) -> bool:
    dist = getattr(entry_point, "dist", None)
    return dist is not None and dist.name == BUILTIN_DIST


class PluginLoadError(ValueError):
    """An installed plugin cannot be imported; the message names it and how to skip it."""


def _load(ep):
    try:
        return ep.load()
    except Exception as exc:  # any import-time failure of third-party code
        dist = getattr(ep, "dist", None)
        where = f" from {dist.name} {dist.version}" if dist else ""
        if _builtin(ep):  # built-ins always load (the switches do not apply): the install is broken
            advice = "reinstall cv-gateway with its dependencies (pip install -e . in its checkout, or make run)"
        else:
            advice = f"fix or uninstall it, or skip it with GATEWAY_DISABLE_PLUGINS={ep.name}"
        raise PluginLoadError(
            f"plugin {ep.name!r} ({ep.value}{where}) cannot be loaded: {type(exc).__name__}: {exc}. "
            f"{advice[0].upper()}{advice[1:]}") from exc


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, loading plugins on first use."""
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager("gateway")
        pm.add_hookspecs(hookspecs)
        disabled = _names("GATEWAY_DISABLE_PLUGINS") or set()
        only = _names("GATEWAY_LOAD_PLUGINS")
        for ep in metadata.entry_points(group=GROUP):
            if not _builtin(ep):
                if ep.name in disabled or "*" in disabled or (only is not None and ep.name not in only):
                    log.info("plugin %s disabled by GATEWAY_DISABLE_PLUGINS/GATEWAY_LOAD_PLUGINS", ep.name)
                    continue
            if pm.get_plugin(ep.name) is not None:
                continue
            pm.register(_load(ep), name=ep.name)
        pm.check_pending()
        if os.environ.get("GATEWAY_TRACE_PLUGINS"):
            pm.trace.root.setwriter(log.info)
            pm.enable_tracing()
        _manager = pm
    return _manager


def reset_plugin_manager() -> None:
    """Forget the loaded plugins (tests that change the switches call this)."""
    global _manager
    _manager = None


def backend_classes() -> dict[str, type]:
    """Backend type name -> class, from every plugin's register_backends hook."""
    found: dict[str, type] = {}

    def register(name: str, cls: type) -> None:
        if name in found and found[name] is not cls:
            raise ValueError(f"two plugins register a backend called {name!r}: {found[name]} and {cls}")
        found[name] = cls

    get_plugin_manager().hook.register_backends(register=register)
    return found


def plugin_records() -> list[PluginRecord]:
    """What is loaded: name, version and module of each plugin (for the CLI and /_admin/plugins)."""
    pm = get_plugin_manager()
    versions = {}
    for ep in metadata.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        versions[ep.name] = (dist.version if dist else "", _builtin(ep))
    records = []
    for name, plugin in pm.list_name_plugin():
        version, builtin = versions.get(name, ("", True))
        records.append(PluginRecord(name, version, getattr(plugin, "__name__", repr(plugin)), builtin))
    return sorted(records, key=lambda r: r.name)
