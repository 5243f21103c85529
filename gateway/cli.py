"""The ``gateway`` command."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

import click

from . import __version__, process_tuning
from .config import MIN_SECRET_LENGTH, ConfigError, Settings, load_settings, unknown_variables


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gateway")
def main() -> None:
    """cv-gateway: S3-compatible object storage for a cluster of servers."""


def settings_options(func):
    """Options shared by every command that needs the settings."""
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help="TOML config file (GATEWAY_CONFIG)."),
        click.option("--host", help="Address to listen on (GATEWAY_HOST, default 127.0.0.1)."),
        click.option("--port", type=int, help="Port to listen on (GATEWAY_PORT, default 8086)."),
        click.option("--data-dir", help="cv-storage directory for the local backend "
                     "(GATEWAY_DATA_DIR, default ./cv-storage)."),
        click.option("--access-key", help="Access key clients sign with (GATEWAY_ACCESS_KEY)."),
        click.option("--secret-key", help="Secret key clients sign with (GATEWAY_SECRET_KEY)."),
        click.option("--allow-anonymous", is_flag=True, default=None,
                     help="Accept unsigned requests (GATEWAY_ALLOW_ANONYMOUS); for tests only."),
        click.option("--log-level", help="debug, info, warning or error (GATEWAY_LOG_LEVEL, default info)."),
        click.option("--local-socket", help="Unix socket for local reads by a FUSE mount on this host "
                     "(GATEWAY_LOCAL_SOCKET; docs/fuse.md, Local reads)."),
        click.option("--access-log/--no-access-log", default=None,
                     help="Log every request (GATEWAY_ACCESS_LOG; costs about 20% on small GETs)."),
        # Cluster options (docs/cluster.md).
        click.option("--role", type=click.Choice(["primary", "redundant", "proxy"]),
                     help="Cluster role (GATEWAY_ROLE). Without it, a node given --registry keeps the role the "
                     "registry has for it, else joins as primary when the cluster has none yet (the first node) "
                     "and as redundant after; a node with neither --role nor --registry is stand-alone."),
        click.option("--registry", help="Cluster registry URL: sqlite:///path/registry.db (one host), "
                     "etcd://host:port[,host:port...], or etcds://host:port[,...][?ca=/path/ca.pem] for etcd "
                     "over TLS (GATEWAY_REGISTRY)."),
        click.option("--advertise", help="URL peers reach this node at, http(s)://host:port (GATEWAY_ADVERTISE)."),
        click.option("--insecure-peers", is_flag=True, default=None,
                     help="Allow plain HTTP between nodes (GATEWAY_INSECURE_PEERS); tests only."),
        click.option("--tls-cert", help="TLS certificate, PEM (GATEWAY_TLS_CERT); serves HTTPS."),
        click.option("--tls-key", help="TLS private key, PEM (GATEWAY_TLS_KEY)."),
        click.option("--tls-ca", help="Cluster CA certificate, PEM (GATEWAY_TLS_CA)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_settings(config_file, **flags) -> Settings:
    for line in unknown_variables():  # first: a misspelt variable often explains the error that follows
        click.echo(f"warning: {line}", err=True)
    try:
        return load_settings(config_file, **flags)
    except ConfigError as exc:
        _fail(str(exc))


@main.command()
@settings_options
@click.option("--print-config", is_flag=True, help="Print the effective settings (secrets masked) and exit.")
def serve(config_file, print_config, **flags) -> None:
    """Run a gateway node."""
    settings = build_settings(config_file, **flags)
    if settings.role == "proxy" and settings.backends:
        unused = ", ".join(f"{name} ({cfg.get('type')})" for name, cfg in settings.backends.items())
        click.echo(f"warning: a proxy stores nothing: backend{'s' if len(settings.backends) > 1 else ''} {unused} "
                   f"{'are' if len(settings.backends) > 1 else 'is'} not used; the storing nodes serve every object "
                   "(drop [backends] from a proxy's config, or run it as --role redundant to store)", err=True)
    if settings.role == "proxy" and "data_dir" in settings.model_fields_set and not settings.backends:
        click.echo(f"warning: a proxy stores nothing: data_dir {settings.data_dir} is not used, nothing is written "
                   "there; the storing nodes serve every object (drop --data-dir, GATEWAY_DATA_DIR or data_dir from "
                   "a proxy's settings, or run it as --role redundant to store)", err=True)
    if settings.role != "proxy" and settings.backends and "data_dir" in settings.model_fields_set:
        names = ", ".join(f"{name} ({cfg.get('type')}{', root ' + str(cfg['root']) if cfg.get('root') else ''})"
                          for name, cfg in settings.backends.items())
        click.echo(f"warning: data_dir {settings.data_dir} is not used: a [backends] table replaces the built-in "
                   f"local backend on data_dir (configured: {names}); set the root of the backend in "
                   "[backends] instead, and drop --data-dir (GATEWAY_DATA_DIR, data_dir)", err=True)
    if settings.registry and not settings.advertise and settings.host.strip("[]") in ("0.0.0.0", "::"):
        from .cluster.settings_check import advertised_url

        click.echo(f"warning: listening on {settings.host} without --advertise: this node tells its peers to reach "
                   f"it at {advertised_url(settings)}, where only nodes on this machine find it; on a cluster of "
                   "several machines set --advertise (GATEWAY_ADVERTISE) to this machine's address, e.g. "
                   f"https://10.0.0.1:{settings.port}", err=True)
    exposed = settings.published_secret_keys() if settings.listens_beyond_this_host() else []
    if exposed:
        click.echo(f"warning: listening on {settings.host}, reachable from other machines, with the example secret "
                   f"key printed in README.md and deploy/ for access key{'s' if len(exposed) > 1 else ''} "
                   f"{', '.join(exposed)}: anyone who can reach port {settings.port} can read, overwrite and delete "
                   "every object. Set your own secret (--secret-key, GATEWAY_SECRET_KEY, secret_key and "
                   "[credentials] in the config file; `make run SECRET_KEY=...`), or listen on 127.0.0.1",
                   err=True)
    if settings.allow_anonymous and settings.listens_beyond_this_host():
        click.echo(f"warning: allow_anonymous is on and the gateway listens on {settings.host}, reachable from "
                   f"other machines: anyone who can reach port {settings.port} can read, overwrite and delete every "
                   "object without a key. It is meant for tests on 127.0.0.1; turn it off (drop --allow-anonymous, "
                   "GATEWAY_ALLOW_ANONYMOUS) or listen on 127.0.0.1", err=True)
    expiry = settings.tls_cert_expiry_warning()
    if expiry:
        click.echo(f"warning: {expiry}", err=True)
    if not print_config:  # --print-config checks a config while the running gateway holds the port
        # Before the app starts: it joins the cluster on start-up, and a node that then cannot
        # listen must not have registered (as the primary, if it came first).
        _check_listen(settings.host, settings.port)
    short = settings.short_secret_keys() if settings.listens_beyond_this_host() else []
    if short:  # after the listen check: a host that is not this machine's is the mistake to name first
        _fail(f"the secret key of access key{'s' if len(short) > 1 else ''} {', '.join(short)} has fewer than "
              f"{MIN_SECRET_LENGTH} characters, and {settings.host} is reachable from other machines: one signed "
              "request seen on the network is enough to find it by trying every key. Give a longer one "
              "(`openssl rand -hex 20`) with --secret-key (GATEWAY_SECRET_KEY, secret_key) or in [credentials], "
              "or listen on 127.0.0.1")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    process_tuning.raise_open_file_limit()  # before the backends size their caches of open files on it
    from .app import create_app

    try:
        app = create_app(settings)  # builds every backend: a bad type or option fails here, also for --print-config
    except ValueError as exc:
        _fail(str(exc))
    if settings.role != "proxy":  # a proxy's data dir is unused (it says so): nothing to check
        # Before the start, as --print-config does: the local backend's own start error came after
        # uvicorn's start-up lines, three times over (the app's log, uvicorn's, and error:).
        _check_local_roots(settings)
    if print_config:
        click.echo(json.dumps(settings.masked(), indent=2, sort_keys=True))
        return
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from .api import access_log

    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, lifespan="on", access_log=settings.access_log,
        log_config=access_log.log_config(LOGGING_CONFIG),
        log_level=settings.log_level, loop=_best_loop(), http=_best_http(app), server_header=False,
        date_header=True, timeout_keep_alive=settings.keep_alive_timeout,
        # The gateway never reads the client address from the scope: skip uvicorn's
        # X-Forwarded-* middleware, which otherwise runs on every request.
        proxy_headers=False,
        ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key, ssl_ca_certs=settings.tls_ca,
    )
    if settings.access_log:  # after uvicorn.Config, which configures the logging
        access_log.install()
    server = _server_class(uvicorn.Server)(config)
    process_tuning.set_cpu_scheduling(settings.cpu_scheduling)  # before any thread starts: they inherit it
    process_tuning.tune_gc()  # last: what exists now lives as long as the process
    try:
        server.run()
    except SystemExit:  # uvicorn exits with its own status (3) when the start-up failed: say why, exit 2
        if server.started:
            raise
    except KeyboardInterrupt:
        # uvicorn shuts down cleanly on SIGINT, then raises it again: Ctrl-C of a gateway (or of `make run`)
        # would end in click's "Aborted!", exit status 1 and make's "Error 1" after a clean stop.
        if not server.started:
            raise
        _exit_now(0)
    if not server.started:
        click.echo(f"error: {app.startup_error or 'the gateway did not start (see the messages above)'}", err=True)
        _exit_now(2)  # as _fail, without waiting for a call a store holds (a start that timed out)
    _exit_now(0)


def _exit_now(code: int) -> None:
    """End the process once the server has shut down, without waiting for the worker threads: one that a
    frozen store holds in a call (an S3 endpoint: its timeout times its attempts, minutes) held the
    process's exit that long, past systemd's stop timeout. The backends were closed in the shutdown,
    and every write that was answered is on disk."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _check_local_roots(settings: Settings) -> None:
    """For --print-config, which builds the backends but does not start them: fail as the start would when
    a local backend's root cannot be created or written by this user (a read-only file system, another
    user's directory), without writing anything."""
    from .config import _this_user

    for name, config in settings.backend_configs().items():
        if config.get("type") != "local" or not config.get("root"):
            continue
        where = "(--data-dir, GATEWAY_DATA_DIR)" if not settings.backends else f"(root of backends.{name})"
        root = os.path.abspath(str(config["root"]))
        existing = root
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            _fail(f"backend {name!r}: root {root} is not usable: {existing} is not a directory {where}")
        if not os.access(existing, os.W_OK | os.X_OK):
            problem = ("is on a read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY
                       else f"is not writable by user {_this_user()}")
            _fail(f"backend {name!r}: root {root} is not usable: {existing} {problem}: give a directory "
                  f"this user may write {where}, or make it writable")


def _check_listen(host: str, port: int) -> None:
    """Fail with a message naming the setting when host:port cannot be listened on (uvicorn says only
    an errno, after the start-up); the socket is closed again, uvicorn opens its own."""
    import errno
    import socket

    where = f"{host}:{port}"
    try:
        addresses = {info[:3] + (info[4],) for info in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)}
    except socket.gaierror as exc:
        _fail(f"cannot listen on {where}: the name does not resolve ({exc.strerror}): set --host (GATEWAY_HOST) "
              "to an address of this machine, e.g. 127.0.0.1, or 0.0.0.0 for every interface")
    for family, kind, proto, address in sorted(addresses, key=str):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no conflict
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    _fail(f"cannot listen on {where}: the address is in use (another gateway?): stop that process "
                          "or choose another --port (GATEWAY_PORT)")
                if exc.errno == errno.EADDRNOTAVAIL:
                    _fail(f"cannot listen on {where}: the address is not one of this machine's: set --host "
                          "(GATEWAY_HOST) to one of its addresses, e.g. 127.0.0.1, or 0.0.0.0 for every interface")
                if exc.errno == errno.EACCES:
                    _fail(f"cannot listen on {where}: permission denied (ports below 1024 need root or "
                          "CAP_NET_BIND_SERVICE): choose a --port (GATEWAY_PORT) of 1024 or more")
                _fail(f"cannot listen on {where}: {exc.strerror or exc}: check --host (GATEWAY_HOST) and --port "
                      "(GATEWAY_PORT)")


def _server_class(base):
    class Server(base):
        """uvicorn's Server; but SIGINT or SIGTERM during start-up ends the process at once.

        uvicorn only notes the signal and acts on it once start-up is over, and start-up waits for
        every backend to answer: an S3 endpoint that accepts connections but never replies holds it
        for minutes (retries x timeouts), and the operator's Ctrl-C or systemd's stop would be
        ignored all that time. Nothing is being served or written then that needs a clean stop."""

        def handle_exit(self, sig, frame) -> None:
            if not self.started:
                print(f"gateway: stopped by {signal.Signals(sig).name} during start-up", file=sys.stderr, flush=True)
                os._exit(128 + sig)
            super().handle_exit(sig, frame)

    return Server


def _best_loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _best_http(app):
    """The gateway's own protocol (uvicorn's httptools one, plain object reads below ASGI:
    gateway/api/protocol.py), or h11 where httptools is missing."""
    try:
        from .api.protocol import protocol_for
    except ImportError:
        return "h11"
    return protocol_for(app)


@main.group()
def plugins() -> None:
    """Inspect the loaded plugins."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_list(as_json: bool) -> None:
    """Show each plugin's name, version and module, and the backend types it provides."""
    from .plugins import backend_registrations, plugin_records

    try:
        records = plugin_records()
        registered = backend_registrations()
    except ValueError as exc:  # a plugin that cannot be loaded, two that register one backend type
        _fail(str(exc))
    types = {}  # by the plugin that registered them (a class may live in another module than the hook)
    for name, (plugin, _) in registered.items():
        types.setdefault(plugin, []).append(name)
    rows = [{**r.__dict__, "backends": types.get(r.name, [])} for r in records]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'NAME':<16} {'VERSION':<10} {'BACKENDS':<16} MODULE")
    for row in rows:
        click.echo(f"{row['name']:<16} {row['version'] or '-':<10} {','.join(row['backends']) or '-':<16} {row['module']}")


from .cli_cluster import cluster  # noqa: E402  (the `gateway cluster` commands)

main.add_command(cluster)

from .cli_mount import mount  # noqa: E402  (the `gateway mount` command)

main.add_command(mount)

from .cli_ops import backup, repair, restore  # noqa: E402  (`gateway backup`, `restore`, `cluster repair`)

main.add_command(backup)
main.add_command(restore)
cluster.add_command(repair)

from .cli_migrate import migrate  # noqa: E402  (the `gateway migrate` command)

main.add_command(migrate)
