"""The one plugin manager: loaded lazily, once, from entry points.

Switches (read when plugins are first loaded):

- ``GATEWAY_DISABLE_PLUGINS=a,b`` skips those entry points (``*`` skips every
  third-party one; built-ins always load, the gateway needs them).
- ``GATEWAY_LOAD_PLUGINS=a,b`` loads only those entry points (plus built-ins).
- ``GATEWAY_TRACE_PLUGINS=1`` logs every hook call.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import sys
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
    """An installed plugin cannot be used (it fails on import, its hooks are wrong or clash with another
    plugin's); the message names it and how to skip it."""


def _advice(ep) -> str:
    """What to do about a plugin that cannot be used: built-ins always load (the switches do not
    apply), so a broken one means a broken install; a third-party one can be skipped."""
    if ep is None or _builtin(ep):
        return "Reinstall cv-gateway with its dependencies (pip install -e . in its checkout, or make run)"
    return f"Fix or uninstall it, or skip it with GATEWAY_DISABLE_PLUGINS={ep.name}"


def _unusable(ep, name: str, problem: str) -> PluginLoadError:
    dist = getattr(ep, "dist", None)
    where = f" from {dist.name} {dist.version}" if dist else ""
    what = f" ({ep.value}{where})" if ep is not None else ""
    # One line: pluggy's own messages span several.
    problem = "; ".join(line.strip() for line in problem.splitlines() if line.strip())
    return PluginLoadError(f"plugin {name!r}{what} {problem}. {_advice(ep)}")


def _load(ep):
    said = io.StringIO()  # what the module writes to stderr while it is imported
    try:
        with contextlib.redirect_stderr(said):
            module = ep.load()
    except SystemExit as exc:  # a program run at import (argparse's usage error, sys.exit): not the gateway's exit
        last = said.getvalue().strip().splitlines()[-1:]
        raise _unusable(ep, ep.name, f"cannot be loaded: importing {ep.value} called sys.exit({exc.code!r})"
                        f"{' after printing: ' + last[0] if last else ''} (does the module run a program or "
                        "parse the command line when imported? Put that under if __name__ == '__main__')") from None
    except Exception as exc:  # any import-time failure of third-party code
        sys.stderr.write(said.getvalue())
        raise _unusable(ep, ep.name, f"cannot be loaded: {type(exc).__name__}: {exc}") from exc
    sys.stderr.write(said.getvalue())  # its warnings, as if nothing had been in between
    return module


_entry_points: dict[str, metadata.EntryPoint] = {}  # plugin name -> its entry point, for messages


def _dist_name(ep) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else None


def _described(ep) -> str:
    if ep is None:
        return "?"
    dist = getattr(ep, "dist", None)
    return f"{ep.value} from {dist.name} {dist.version}" if dist else ep.value


def _same_name(first, second) -> PluginLoadError:
    """Two distributions whose entry points have one name: the second used to be skipped without a
    word (its backend types then "unknown"), and no switch can tell the two apart."""
    renamed = second if first is None or _builtin(first) or not _builtin(second) else first
    return PluginLoadError(
        f"two plugins are called {second.name!r}: {_described(first)} and {_described(second)}; "
        f"plugin names must be unique. Rename the entry point in [project.entry-points.\"{GROUP}\"] of "
        f"{_dist_name(renamed)}'s pyproject.toml (and reinstall it), or uninstall one of them")


def _warn_unknown_names(only: set[str] | None) -> None:
    """GATEWAY_LOAD_PLUGINS naming no installed plugin (a typo) did nothing without a word: the plugin
    meant to load did not, and a config using its backend type said only 'unknown backend type'.
    (GATEWAY_DISABLE_PLUGINS is not checked: a plugin it misses still loads, and says so if it is broken.)"""
    third_party = sorted({ep.name for ep in metadata.entry_points(group=GROUP) if not _builtin(ep)})
    for name in sorted((only or set()) - set(third_party)):
        log.warning("GATEWAY_LOAD_PLUGINS names %r, which is not an installed third-party plugin (those are: %s); "
                    "check the spelling against `gateway plugins list`", name, ", ".join(third_party) or "none")


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, loading plugins on first use."""
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager("gateway")
        pm.add_hookspecs(hookspecs)
        disabled = _names("GATEWAY_DISABLE_PLUGINS") or set()
        only = _names("GATEWAY_LOAD_PLUGINS")
        _warn_unknown_names(only)
        for ep in metadata.entry_points(group=GROUP):
            if not _builtin(ep):
                if ep.name in disabled or "*" in disabled or (only is not None and ep.name not in only):
                    log.info("plugin %s disabled by GATEWAY_DISABLE_PLUGINS/GATEWAY_LOAD_PLUGINS", ep.name)
                    continue
            if pm.get_plugin(ep.name) is not None:
                first = _entry_points.get(ep.name)
                if first is not None and _dist_name(first) == _dist_name(ep):
                    continue  # one distribution found twice on the path
                raise _same_name(first, ep)
            _entry_points[ep.name] = ep
            module = _load(ep)
            other = pm.get_name(module)
            if other is not None:  # pluggy's own error is a ValueError with the repr of every plugin
                raise _unusable(ep, ep.name, f"names the module {ep.value}, which plugin {other!r} loaded already "
                                f"({_described(_entry_points.get(other))}); each plugin needs a module of its own: "
                                "in a copy of a plugin, rename its package too, not only the distribution and the "
                                "entry point")
            try:
                pm.register(module, name=ep.name)
            except pluggy.PluginValidationError as exc:  # a hookimpl whose arguments no hookspec has
                raise _unusable(ep, ep.name, f"cannot be loaded: its hooks do not match the gateway's: {exc}") from exc
        for name, plugin in pm.list_name_plugin():
            for caller in pm.get_hookcallers(plugin) or []:  # no caller awaits what a hook returns
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin and (inspect.iscoroutinefunction(impl.function)
                                                  or inspect.isasyncgenfunction(impl.function)):
                        # It would run without a word and do nothing: nobody awaits what it returns.
                        raise _unusable(_entry_points.get(name), name,
                                        f"cannot be loaded: its {caller.name} hook is an async function; "
                                        "the gateway calls hooks as plain functions (use def, not async def)")
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:  # a hookimpl for a hook that does not exist (misspelled)
            name = pm.get_name(exc.plugin) or repr(exc.plugin)
            raise _unusable(_entry_points.get(name), name,
                            f"cannot be loaded: its hooks do not match the gateway's: {exc}") from exc
        _contain_event_hooks(pm)
        if os.environ.get("GATEWAY_TRACE_PLUGINS"):
            pm.trace.root.setwriter(log.info)
            pm.enable_tracing()
        _manager = pm
    return _manager


# Notifications after the fact: the object is stored (or deleted) when they run.
EVENT_HOOKS = ("on_object_written", "on_object_deleted")


def _contain_event_hooks(pm: pluggy.PluginManager) -> None:
    """A plugin's event hook that raises is logged with its name and traceback, and the others still
    run. It used to turn the S3 answer of a PUT or DELETE that had succeeded into a 500 (the client
    then retried, or reported a failure for a stored object) and to skip every hook after it."""
    for hook in EVENT_HOOKS:
        for impl in getattr(pm.hook, hook).get_hookimpls():
            if impl.wrapper or impl.hookwrapper or getattr(impl.function, "_gateway_contained", False):
                continue
            impl.function = _contained(impl.function, hook, impl.plugin_name)  # type: ignore[misc]


def _contained(function, hook: str, plugin: str):
    import functools

    @functools.wraps(function)
    def call(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception:
            log.exception("plugin %r: its %s hook failed (the request it reports on succeeded and was answered "
                          "as such); fix the plugin, or skip it with GATEWAY_DISABLE_PLUGINS=%s", plugin, hook, plugin)
            return None

    call._gateway_contained = True
    return call


def reset_plugin_manager() -> None:
    """Forget the loaded plugins (tests that change the switches call this)."""
    global _manager
    _manager = None


def backend_registrations() -> dict[str, tuple[str, type]]:
    """Backend type name -> (the plugin that registered it, its class), from every plugin's
    register_backends hook. Each plugin's hook is called on its own, so what goes wrong (it raises,
    registers something that is not a Backend, or a type another plugin has) names that plugin."""
    from .backend import Backend

    pm = get_plugin_manager()
    found: dict[str, tuple[str, type]] = {}
    hook = pm.hook.register_backends
    names = [impl.plugin_name for impl in hook.get_hookimpls()]  # in the order they were loaded
    for plugin in names:

        def register(name: str, cls: type, plugin: str = plugin) -> None:
            if not isinstance(name, str) or not name:
                raise _unusable(_entry_points.get(plugin), plugin,
                                f"registers a backend type named {name!r}: the name must be a non-empty string")
            if not (isinstance(cls, type) and issubclass(cls, Backend)):
                raise _unusable(_entry_points.get(plugin), plugin,
                                f"registers backend type {name!r} as {cls!r}, which is not a subclass of "
                                "gateway.backend.Backend")
            problem = _class_problem(cls)
            if problem:
                raise _unusable(_entry_points.get(plugin), plugin,
                                f"registers backend type {name!r} as {cls.__module__}.{cls.__qualname__}, {problem}")
            if name in found and found[name][1] is not cls:
                other, other_cls = found[name]
                skip = [n for n in (other, plugin) if not _builtin_name(n)]
                advice = (f"skip one with GATEWAY_DISABLE_PLUGINS={' or '.join(skip)}" if skip
                          else "reinstall cv-gateway")
                raise PluginLoadError(
                    f"plugins {other!r} and {plugin!r} both register a backend type called {name!r} "
                    f"({other_cls.__module__}.{other_cls.__qualname__} and {cls.__module__}.{cls.__qualname__}): "
                    f"{advice}")
            found[name] = (plugin, cls)

        others = [pm.get_plugin(n) for n in names if n != plugin]
        try:
            returned = [r for r in pm.subset_hook_caller("register_backends", others)(register=register)
                        if r is not None]
        except PluginLoadError:
            raise
        except Exception as exc:  # a bug in the plugin's hook: name it, not a traceback through pluggy
            raise _unusable(_entry_points.get(plugin), plugin,
                            f"fails in its register_backends hook: {type(exc).__name__}: {exc}") from exc
        if returned:  # what it returned is thrown away: its backend types would be "unknown" in every config
            raise _unusable(_entry_points.get(plugin), plugin,
                            f"returns {_short(returned[0])} from its register_backends hook, which registers "
                            "nothing: call register(type_name, BackendClass) for each backend type instead")
    return found


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _class_problem(cls: type) -> str:
    """Why the gateway cannot build ``cls`` from a config section (as ObjectService does:
    ``cls(name=<instance name>, **options)``), or "" when it can."""
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        return f"which does not implement the abstract methods of gateway.backend.Backend: {missing}"
    try:
        parameters = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return ""
    takes_name = any(p.kind is inspect.Parameter.VAR_KEYWORD
                     or (p.name == "name" and p.kind is not inspect.Parameter.POSITIONAL_ONLY) for p in parameters)
    if not takes_name:
        return ("whose __init__ does not take name= (every instance is built as "
                "Class(name=<the [backends.NAME] name>, **its options)): define __init__(self, name, ...) and "
                "pass name on to Backend.__init__")
    return ""


def _builtin_name(plugin: str) -> bool:
    ep = _entry_points.get(plugin)
    return ep is None or _builtin(ep)


def backend_classes() -> dict[str, type]:
    """Backend type name -> class, from every plugin's register_backends hook."""
    return {name: cls for name, (_, cls) in backend_registrations().items()}


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
