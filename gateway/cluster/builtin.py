"""Registers the built-in cluster registries (sqlite, etcd) through the plugin hook."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_registries(register):
    from .registry_etcd import EtcdRegistry
    from .registry_sqlite import SqliteRegistry

    register("sqlite", SqliteRegistry)
    register("etcd", EtcdRegistry)
    register("etcds", EtcdRegistry)  # etcd's JSON gateway over HTTPS
