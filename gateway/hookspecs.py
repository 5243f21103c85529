"""The hooks a gateway plugin can implement.

A plugin is a module (or object) with functions decorated by ``hookimpl``,
found through the ``gateway.backends`` entry-point group. Built-in backends
register through exactly the same path.

Hook implementations are plain functions (``def``; an ``async def`` one is
refused at load time, nothing would await it). The ``on_object_*`` events run
in the event loop after the request's work is done: keep them quick (hand the
event to a queue or a thread of your own). One that raises is logged with the
plugin's name; the client still gets the success that happened, and the other
plugins' hooks still run.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("gateway")
hookimpl = pluggy.HookimplMarker("gateway")


@hookspec
def register_backends(register):
    """Register backend classes.

    :param register: call ``register(name, cls)`` for each
        :class:`gateway.backend.Backend` subclass; ``name`` is what a config's
        ``[backends.X] type = "name"`` refers to.
    """


@hookspec
def register_registries(register):
    """Register cluster registry classes.

    :param register: call ``register(scheme, cls)`` for each
        :class:`gateway.cluster.registry.Registry` subclass; ``scheme`` is the
        URL scheme of ``--registry`` (``sqlite``, ``etcd``).
    """


@hookspec
def on_object_written(bucket, key, info):
    """Called after an object was stored (PUT, copy, multipart complete).

    :param bucket: the bucket name.
    :param key: the object key.
    :param info: the new :class:`gateway.backend.ObjectInfo`.
    """


@hookspec
def on_object_deleted(bucket, key):
    """Called after an object was deleted.

    :param bucket: the bucket name.
    :param key: the object key.
    """
