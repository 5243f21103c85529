"""The ``gateway mount ENDPOINT MOUNTPOINT`` command (see docs/fuse.md)."""

from __future__ import annotations

import os
import sys

import click

from .config import MOUNT_KEYS_FROM, ConfigError, is_http_url, load_settings

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def parse_size(text: str) -> int:
    """'8G' -> 8589934592; plain numbers are bytes."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _SIZE_UNITS else ""
    number = value[: len(value) - len(unit)]
    try:
        size = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        size = -1.0
    if not 0 <= size < 2 ** 63:  # also NaN and infinity
        raise click.BadParameter(f"{text!r} is not a size (examples: 512M, 8G)")
    return int(size)


def check_endpoint(endpoint: str) -> None:
    """The gateway's URL, http(s)://host:port; a BadParameter saying so otherwise."""
    if not is_http_url(endpoint):
        raise click.BadParameter(f"{endpoint!r} is not the gateway's URL (example: http://127.0.0.1:8086)",
                                 param_hint="ENDPOINT")


def parse_umask(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an octal umask (example: 022)") from None
    if not 0 <= value <= 0o777:
        raise click.BadParameter("a umask is between 000 and 777")
    return value


# GATEWAY_* variables of a cluster node that a mount has no use for (see mount()).
SERVER_ONLY_VARIABLES = ("GATEWAY_ROLE", "GATEWAY_REGISTRY", "GATEWAY_ADVERTISE", "GATEWAY_CLUSTER_SECRET",
                         "GATEWAY_INSECURE_PEERS")


@click.command()
@click.argument("endpoint")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML config file with access_key/secret_key (GATEWAY_CONFIG), as for `gateway serve`.")
@click.option("--access-key", help="Access key (GATEWAY_ACCESS_KEY).")
@click.option("--secret-key", help="Secret key (GATEWAY_SECRET_KEY).")
@click.option("--uid", type=int, help="Owner shown for objects that store none (default: you).")
@click.option("--gid", type=int, help="Group shown for objects that store none (default: yours).")
@click.option("--umask", default="022", show_default=True, help="Octal umask for objects that store no mode.")
@click.option("--read-only", is_flag=True, help="Mount read-only.")
@click.option("--allow-other", is_flag=True, help="Let other users use the mount (needs user_allow_other "
                                                  "in /etc/fuse.conf unless root).")
@click.option("--attr-ttl", type=float, default=5.0, show_default=True,
              help="Seconds attributes (and missing names) are cached; 0 disables.")
@click.option("--dir-ttl", type=float, default=5.0, show_default=True,
              help="Seconds directory listings are cached; 0 disables.")
@click.option("--timeout", type=float, default=15.0, show_default=True,
              help="Seconds to wait for the gateway before an operation fails with EIO.")
@click.option("--spool-dir", type=click.Path(file_okay=False),
              help="Where files being written are spooled (default: the system temp dir).")
@click.option("--spool-size", default="8G", show_default=True, help="Most bytes spooled at once (then ENOSPC).")
@click.option("--direct-io-min", default="0", show_default=True,
              help="Read objects of at least this size (e.g. 64M) with direct_io: faster 1 MiB streaming reads, "
                   "but no page cache and no shared mmap for them. 0 turns it off.")
@click.option("--statahead", type=click.IntRange(0, 256), default=32, show_default=True,
              help="Small files fetched ahead when a program reads a directory's files in name order "
                   "(cp -r, tar, rsync); 0 turns it off. Off with --attr-ttl 0. Memory: at most this many "
                   "x 128 KiB for each of 8 directories.")
@click.option("--local-socket", type=click.Path(dir_okay=False),
              help="The --local-socket of a gateway on this host: large objects it stores are read from their "
                   "files, not through HTTP (docs/fuse.md, Local reads). Others are read through HTTP as always.")
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False),
              help="CA certificate(s) to verify an https:// gateway with (default: the system's), e.g. the "
              "cluster's ca.pem of `gateway cluster tls init`.")
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground (default: return once mounted).")
@click.option("-d", "--debug", is_flag=True, help="Log every FUSE call and request (implies nothing else).")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Log here (in the background, the only log).")
def mount(endpoint, mountpoint, config_file, access_key, secret_key, uid, gid, umask, read_only, allow_other,
          attr_ttl, dir_ttl, timeout, spool_dir, spool_size, direct_io_min, statahead, local_socket, ca_bundle,
          foreground, debug, log_file) -> None:
    """Mount the gateway at ENDPOINT (http://host:port) on MOUNTPOINT: buckets are its top-level directories."""
    from .fuse.fs import MountOptions
    from .fuse.mount import MountConfig, main_exit

    # The mount is an S3 client: it reads its keys from the settings, nothing of a server's. A shell set
    # up to run cluster nodes (README "Run a cluster" exports GATEWAY_REGISTRY, without --insecure-peers,
    # a flag of serve) made it refuse to start over a node's checks ("advertise ... is plain HTTP").
    for name in SERVER_ONLY_VARIABLES:
        os.environ.pop(name, None)
    try:
        # allow_anonymous: missing keys are said below for a mount (serve's message offers allow_anonymous)
        settings = load_settings(config_file, access_key=access_key, secret_key=secret_key, allow_anonymous=True)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if not settings.access_key:
        click.echo(f"error: the mount needs {MOUNT_KEYS_FROM}", err=True)
        sys.exit(2)
    check_endpoint(endpoint)
    if ca_bundle and not endpoint.lower().startswith("https://"):
        raise click.BadParameter(f"{endpoint} is plain HTTP: a CA bundle verifies https:// gateways only",
                                 param_hint="--ca-bundle")
    if ca_bundle:
        import ssl

        try:  # loaded as the mount's connections will (a DER file, a key: every operation was EIO)
            ssl.create_default_context(cafile=ca_bundle)
        except (ssl.SSLError, ValueError) as exc:
            raise click.BadParameter(f"{ca_bundle} holds no PEM CA certificate ({exc}): give the CA's certificate "
                                     "in PEM, e.g. the ca.pem of `gateway cluster tls init`",
                                     param_hint="--ca-bundle") from None
    for name, value in (("--attr-ttl", attr_ttl), ("--dir-ttl", dir_ttl)):
        if not 0 <= value < 1e9:  # also NaN and infinity
            raise click.BadParameter(f"{value} is not a number of seconds >= 0", param_hint=name)
    if not 0 < timeout < 1e6:
        raise click.BadParameter(f"{timeout} is not a number of seconds > 0", param_hint="--timeout")
    for name, value in (("--uid", uid), ("--gid", gid)):
        if value is not None and not 0 <= value < 2 ** 32 - 1:
            raise click.BadParameter(f"{value} is not a user or group id", param_hint=name)
    if log_file and not os.path.isdir(os.path.dirname(os.path.abspath(log_file))):
        raise click.BadParameter(f"the directory of {log_file} does not exist", param_hint="--log-file")
    options = MountOptions(
        uid=os.getuid() if uid is None else uid, gid=os.getgid() if gid is None else gid,
        umask=parse_umask(umask), read_only=read_only, attr_ttl=attr_ttl, dir_ttl=dir_ttl,
        # Absolute: the mount changes directory when it goes to the background (a relative spool
        # directory then named another place, and every write failed with ENOENT).
        spool_dir=os.path.abspath(spool_dir) if spool_dir else spool_dir,
        spool_size=parse_size(spool_size), direct_io_min=parse_size(direct_io_min),
        statahead=statahead, local_socket=os.path.abspath(local_socket) if local_socket else None,
    )
    main_exit(MountConfig(
        endpoint=endpoint, mountpoint=os.path.abspath(mountpoint), access_key=settings.access_key,
        secret_key=settings.secret_key, region=settings.region, timeout=timeout, foreground=foreground,
        debug=debug, allow_other=allow_other, log_file=os.path.abspath(log_file) if log_file else None,
        ca_bundle=os.path.abspath(ca_bundle) if ca_bundle else None, fs=options,
    ))
