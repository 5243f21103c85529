"""Settings: one typed model, from four sources.

Precedence: command-line flags > ``GATEWAY_*`` environment variables > the
TOML file given with ``--config`` (or ``GATEWAY_CONFIG``) > defaults.
A bad value fails at start-up with a message naming the setting.
"""

from __future__ import annotations

import os
import re
import time
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

SECRET_FIELDS = ("secret_key", "cluster_secret")
# Secret keys printed in this repository (make run's default in the Makefile and README.md, the examples
# in deploy/gateway.toml): anyone can sign with them. Fine on 127.0.0.1; `gateway serve` warns when it
# listens anywhere else with one of them (tests/test_cli_newcomer.py keeps this list in step).
PUBLISHED_SECRETS = frozenset({"cvgateway-secret-key", "change-me", "another-secret"})
# The shortest secret key `gateway serve` accepts when it listens beyond loopback (MinIO's minimum): a signed
# request seen on the network lets anyone try every shorter one offline.
MIN_SECRET_LENGTH = 8
TLS_EXPIRY_WARNING_DAYS = 30  # serve warns when its certificate expires sooner
# Where `gateway mount` (and mount.gateway, the fstab helper) takes its keys from, for its messages.
MOUNT_KEYS_FROM = ("--access-key and --secret-key (GATEWAY_ACCESS_KEY, GATEWAY_SECRET_KEY), or access_key and "
                   "secret_key in the --config file (config=FILE among the options of an /etc/fstab line)")


# host:port or [IPv6]:port with nothing around it: an address given where a URL was meant, for the messages
# that suggest the URL (an --advertise or --registry without its scheme).
HOST_AND_PORT = re.compile(r"[\w.\-]+:\d+|\[[0-9a-fA-F:.]+\]:\d+")


class ConfigError(Exception):
    """A setting is wrong; the message names it and says what is expected."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="forbid", validate_default=True)

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8086, ge=1, le=65535, description="port to listen on")
    data_dir: Path = Field(Path("./cv-storage"), description="the cv-storage directory of the default local backend")
    access_key: str | None = Field(None, description="access key of the main credential pair")
    secret_key: str | None = Field(None, description="secret key of the main credential pair")
    credentials: dict[str, str] = Field(default_factory=dict, description="more access key -> secret key pairs")
    allow_anonymous: bool = Field(False, description="accept unsigned requests (never in production)")
    region: str = Field("us-east-1", description="region reported to clients")
    max_clock_skew: int = Field(900, ge=1, description="seconds a signed request's time may differ from ours")
    backends: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description='backend instances: name -> {"type": ..., options}; default: one local'
    )
    buckets: dict[str, str] = Field(default_factory=dict, description="bucket name -> backend instance name")
    default_backend: str = Field("local", description="backend instance for buckets not named in [buckets]")
    min_part_size: int = Field(5 * 1024 * 1024, ge=1, description="smallest multipart part but the last, in bytes")
    multipart_expiry: float = Field(86400.0, ge=0, description="seconds after which an unfinished multipart "
                                    "upload is aborted and its parts deleted, as MinIO does (0: never)")
    access_log: bool = Field(False, description="log every request (costs about 20% on small GETs)")
    keep_alive_timeout: float = Field(30.0, gt=0, description="seconds an idle client connection stays open "
                                      "(closed 1-2 times this after its last request, or after the last "
                                      "byte of a request body that stopped arriving: 400 RequestTimeout)")
    log_level: str = Field("info", description="debug, info, warning or error")
    cpu_scheduling: Literal["batch", "normal"] = Field(
        "batch", description="Linux scheduling policy of the gateway: batch (SCHED_BATCH: a woken gateway does not "
        "preempt the running process, so processes that talk to each other on one CPU take their requests in "
        "batches) or normal (SCHED_OTHER)")
    local_socket: Path | None = Field(
        None, description="Unix socket through which a FUSE mount on this host reads large objects from "
        "their files, without HTTP (docs/fuse.md, Local reads); created mode 0600; none: off")
    # Cluster (docs/cluster.md). Neither role nor registry: a stand-alone node, none of these apply.
    role: Literal["primary", "redundant", "proxy"] | None = Field(
        None, description="cluster role: primary, redundant or proxy (none, with a registry: the role the registry "
        "has for this node, else primary for the first node and redundant after; with neither: stand-alone)")
    registry: str | None = Field(
        None, description="cluster registry URL: sqlite:///path/registry.db, etcd://host:port[,host:port...] or "
        "etcds://host:port[,...]?ca=/path/ca.pem (etcd over TLS)")
    advertise: str | None = Field(None, description="URL other nodes reach this one at (default: from host/port)")
    node_id: str | None = Field(None, description="this node's name in the cluster (default: from advertise)")
    cluster_secret: str | None = Field(None, description="shared secret that signs peer requests (HMAC)")
    insecure_peers: bool = Field(False, description="allow plain HTTP between nodes (tests, development)")
    peer_timeout: float = Field(2.0, gt=0, description="seconds a peer may take to answer before it is de-prioritized")
    registry_reload_interval: float = Field(60.0, gt=0, description="seconds between re-reads of the node list")
    heartbeat_interval: float = Field(5.0, gt=0, description="seconds between this node's registry heartbeats")
    full_store_retry: float = Field(60.0, gt=0, description="seconds a node whose store was found full takes no "
                                    "placed writes for it, before it is tried again (docs/cluster.md, A full or "
                                    "failed store)")
    failed_store_retry: float = Field(15.0, gt=0, description="seconds a node whose store failed (EIO, read-only, "
                                      "its backend unreachable) takes no placed writes for it, before it is tried "
                                      "again (docs/cluster.md, A full or failed store)")
    strict_listings: bool = Field(False, description="LIST, ListBuckets and ListMultipartUploads answer 503 "
                                  "while a storing node cannot be asked, instead of leaving its entries out "
                                  "(docs/cluster.md, Limits)")
    failover: bool = Field(True, description="with two or more redundant nodes, one of the first two takes over "
                           "when the primary is down (docs/cluster.md, Failover)")
    failover_after: float = Field(15.0, gt=0, description="seconds without the primary's heartbeat and lease "
                                  "before a failover; at least two heartbeat intervals")
    tls_cert: Path | None = Field(None, description="this node's TLS certificate (PEM); serves HTTPS")
    tls_key: Path | None = Field(None, description="the private key of tls_cert (PEM)")
    tls_ca: Path | None = Field(None, description="the cluster CA (PEM) that peer certificates are checked against")

    @field_validator("port", "max_clock_skew", "min_part_size", "multipart_expiry", "keep_alive_timeout",
                     "peer_timeout", "registry_reload_interval", "heartbeat_interval", "failover_after",
                     "full_store_retry", "failed_store_retry", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        # pydantic takes true for 1 and false for 0: `port = true` in the file listened on port 1.
        if isinstance(value, bool):
            raise ValueError("must be a number, not true or false")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        # uvicorn would take "" for every interface: opening the gateway to the network must be asked for.
        value = value.strip()  # "10.0.0.1 " from a quoted variable did not resolve
        if not value:
            raise ValueError("must not be empty (use 0.0.0.0 to listen on every interface)")
        # An address copied from a URL did not resolve either, said as "cannot listen on 127.0.0.1:8086:8086".
        if "://" in value:
            raise ValueError(f"{value!r} is a URL: give the address alone, e.g. 127.0.0.1, or 0.0.0.0 for every "
                             "interface (the port goes in --port, GATEWAY_PORT)")
        with_port = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]+):(\d+)", value)
        if with_port:
            raise ValueError(f"{value!r} has a port in it: give the address alone ({with_port[1].strip('[]')}) and "
                             f"the port with --port {with_port[2]} (GATEWAY_PORT)")
        return value.removeprefix("[").removesuffix("]") if value.startswith("[") else value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        # Reported to clients (HeadBucket, ListBuckets) and used by the mount's signatures: an empty
        # one would break both without saying why.
        if not value.strip():
            raise ValueError("must not be empty (the default is us-east-1)")
        return value

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, value: Path) -> Path:
        if not str(value).strip() or str(value) == ".":
            raise ValueError("must name a directory for the objects (an empty value would store them "
                             "in the current directory)")
        return value

    @field_validator("local_socket")
    @classmethod
    def _local_socket(cls, value: Path | None) -> Path | None:
        # An empty value is the path "." to pathlib: the start failed on "--local-socket . exists and is not a
        # socket", and --print-config passed it.
        if value is not None and str(value) in ("", "."):
            raise ValueError("is empty: give the path of the Unix socket to create (e.g. "
                             "/run/cv-gateway/local.sock), or leave it unset for no local reads")
        return value

    @field_validator("tls_cert", "tls_key", "tls_ca")
    @classmethod
    def _tls_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # Checked here so a wrong path is one clear line, not a traceback from deep in uvicorn's start-up.
        if value is None:
            return None
        if str(value) in ("", "."):
            raise ValueError("is empty: give the path of a PEM file, or leave it unset")
        if not value.is_file():
            raise ValueError(f"{value} is not a file (a PEM file is expected)")
        try:  # here, where the setting is known: loading the pair said only "Permission denied", for either file
            with open(value, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"{value} cannot be read by user {_this_user()}: {exc.strerror or exc}: make it "
                             "readable by the user the gateway runs as (a key: owned by that user, mode 600)") from None
        if info.field_name == "tls_ca":
            _check_tls_ca(value)
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ValueError("must be one of debug, info, warning, error")
        return value.lower()

    @model_validator(mode="after")
    def _checks(self) -> "Settings":
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("access_key and secret_key must be set together")
        credentials = self.all_credentials()
        if self.secret_key == "" or any(not k.strip() or not v.strip() for k, v in credentials.items()):
            raise ValueError("access keys and secret keys must not be empty (nor only spaces)")
        if self.access_key in self.credentials and self.credentials[self.access_key] != self.secret_key:
            raise ValueError(f"access key {self.access_key!r} is given twice with different secrets (access_key "
                             "and credentials): keep one")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together (--tls-cert and --tls-key)")
        if self.tls_cert is not None:
            _check_tls_pair(self.tls_cert, self.tls_key)
            if self.tls_ca is not None:
                check_node_certificate(self.tls_cert, self.tls_key, self.tls_ca)
        for name, config in self.backend_configs().items():
            if config.get("type") is None:
                raise ValueError(f'backends.{name} has no type: add type = "local" (or another backend type: '
                                 "`gateway plugins list` shows the installed ones)")
        if not credentials and not self.allow_anonymous:
            raise ValueError(
                "no credentials: set --access-key and --secret-key (GATEWAY_ACCESS_KEY, GATEWAY_SECRET_KEY), "
                "or allow_anonymous for a test setup"
            )
        if self.default_backend not in self.backend_configs():
            configured = ", ".join(sorted(self.backend_configs())) or "none"
            hint = ("; a [backends] table replaces the built-in local backend: set default_backend to one of them"
                    if self.backends and self.default_backend == "local" else "")
            raise ValueError(f"default_backend {self.default_backend!r} is not a configured backend "
                             f"(configured: {configured}){hint}")
        for bucket, backend in self.buckets.items():
            if backend not in self.backend_configs():
                raise ValueError(f"buckets.{bucket} names backend {backend!r}, which is not configured")
        if self.role is not None or self.registry is not None:
            from .cluster.settings_check import check_cluster_settings

            if self.advertise:
                _check_advertise(self.advertise)
            check_cluster_settings(self)
        return self

    def tls_cert_expiry_warning(self, within_days: int = TLS_EXPIRY_WARNING_DAYS, now: float | None = None) -> str:
        """What to say when tls_cert expires within ``within_days`` ("" otherwise): once it has, clients
        and the peers refuse this node (a cluster's reads of its objects become 503s)."""
        if self.tls_cert is None:
            return ""
        import datetime

        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(self.tls_cert.read_bytes())
        except (OSError, ValueError):
            return ""  # _check_tls_pair has said what is wrong
        moment = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC)
        left = cert.not_valid_after_utc - moment
        if left > datetime.timedelta(days=within_days):
            return ""
        if left <= datetime.timedelta(0):
            return (f"tls_cert {self.tls_cert} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: clients "
                    "refuse it. Issue a new one (`gateway cluster tls init --dir <the CA's directory> --node "
                    "NAME=HOST`) and restart with it")
        return (f"tls_cert {self.tls_cert} expires on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, in "
                f"{max(left.days, 0)} days: clients and peers refuse it from then on. Issue a new one "
                "(`gateway cluster tls init --dir <the CA's directory> --node NAME=HOST`) and restart this node "
                "before then")

    def all_credentials(self) -> dict[str, str]:
        found = dict(self.credentials)
        if self.access_key:
            found[self.access_key] = self.secret_key or ""
        return found

    def listens_beyond_this_host(self) -> bool:
        """True unless host is a loopback address (or localhost): other machines may connect."""
        import ipaddress

        if self.host.strip().lower() == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.host.strip().strip("[]")).is_loopback
        except ValueError:  # a host name: whatever it resolves to, assume it is reachable
            return True

    def published_secret_keys(self) -> list[str]:
        """Access keys whose secret is one printed in this repository (PUBLISHED_SECRETS)."""
        return sorted(key for key, secret in self.all_credentials().items() if secret in PUBLISHED_SECRETS)

    def short_secret_keys(self) -> list[str]:
        """Access keys whose secret has fewer than MIN_SECRET_LENGTH characters."""
        # Counted without the spaces around it: eight blanks are no secret.
        return sorted(key for key, secret in self.all_credentials().items()
                      if len(secret.strip()) < MIN_SECRET_LENGTH)

    def backend_configs(self) -> dict[str, dict[str, Any]]:
        """Backend instances; without any configured, one local backend on data_dir."""
        if self.backends:
            return self.backends
        return {"local": {"type": "local", "root": str(self.data_dir)}}

    def masked(self) -> dict[str, Any]:
        """The effective settings with secrets replaced by ****."""
        data = self.model_dump(mode="json")
        for name in SECRET_FIELDS:
            if data.get(name):
                data[name] = "****"
        data["credentials"] = {k: "****" for k in data["credentials"]}
        data["backends"] = {
            name: {k: ("****" if is_secret_option(k) else v) for k, v in cfg.items()}
            for name, cfg in self.backend_configs().items()
        }
        return data


# Backend options whose values --print-config masks: any name with one of these in it
# (docs/plugins.md tells plugin authors to name their secret options so).
SECRET_OPTION_WORDS = ("password", "secret", "token", "credential", "passphrase", "api_key", "apikey",
                       "private_key")


def is_secret_option(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_OPTION_WORDS)


# GATEWAY_* variables that are read but are no settings (docs/configuration.md, docs/plugins.md).
OTHER_VARIABLES = frozenset({"GATEWAY_CONFIG", "GATEWAY_DISABLE_PLUGINS", "GATEWAY_LOAD_PLUGINS",
                             "GATEWAY_TRACE_PLUGINS"})


def unknown_variables(environ: dict[str, str] | None = None) -> list[str]:
    """One line for each GATEWAY_* environment variable that is neither a setting nor another variable the
    gateway reads: the settings ignore it, so a misspelt GATEWAY_SECRETKEY would go unnoticed."""
    import difflib

    known = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields} | OTHER_VARIABLES
    lines = []
    for variable in sorted(v for v in (os.environ if environ is None else environ) if v.upper().startswith("GATEWAY_")):
        if variable.upper() in known:
            continue
        close = difflib.get_close_matches(variable.upper(), sorted(known), n=1, cutoff=0.8)
        hint = f": did you mean {close[0]}?" if close else ""
        lines.append(f"{variable} in the environment is not a gateway setting and is ignored{hint} (every "
                     "GATEWAY_* variable is listed in docs/configuration.md)")
    return lines


def _this_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def is_http_url(url: str) -> bool:
    """http:// or https:// with a host, and a port from 1 to 65535 if one is given; nothing after it but
    a trailing slash (a gateway answers at the root of its URL)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is no number or out of range
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0
            and _beyond_the_root(url) is None)


def _check_advertise(advertise: str) -> None:
    """Refuse an advertised URL peers could not call, saying what is wrong with it."""
    try:
        parts = urlsplit(advertise)
    except ValueError:  # an unclosed [ of an IPv6 address
        parts = None
    # The scheme first: urlsplit reads "localhost:8086" as scheme "localhost" and path "8086", and
    # "10.0.0.1:8086" as a path, so without one the message was "has a path (8086)".
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        shown = "" if "@" in advertise else f" {advertise!r}"  # a password in it is never echoed
        example = f", e.g. https://{advertise.strip()}" if HOST_AND_PORT.fullmatch(advertise.strip()) else ""
        raise ValueError(f"advertise{shown} is not a URL like https://10.0.0.2:8086: give http:// or https://, the "
                         f"host and the port{example} (--advertise, GATEWAY_ADVERTISE)")
    if parts.hostname in ("0.0.0.0", "::"):  # a peer on another machine would connect to itself
        raise ValueError(f"advertise {advertise!r} names no machine ({parts.hostname} is where a server listens: "
                         "every interface): give the address peers reach this node at, e.g. "
                         "https://10.0.0.1:8086 (--advertise, GATEWAY_ADVERTISE)")
    extra = _beyond_the_root(advertise)
    if extra:  # the relay appends the request's path to it: every peer call would miss
        shown = "" if "user name" in extra else f" {advertise!r}"
        raise ValueError(f"advertise{shown} {extra}: peers call a node at the root of its URL; give "
                         "scheme://host:port only, e.g. https://10.0.0.1:8086 (--advertise, GATEWAY_ADVERTISE)")


def _beyond_the_root(url: str) -> str | None:
    """What a gateway's URL has that a gateway cannot use: a path (peers and clients call the root), a query,
    a fragment, or a user name or password (sent to every peer, and shown as the node's id)."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        return "has a user name or password in it"
    if parts.path not in ("", "/"):
        return f"has a path ({parts.path})"
    if parts.query or url.rstrip("/").endswith("?"):
        return f"has a query (?{parts.query})"
    if parts.fragment or "#" in url:
        return "has a fragment (#...)"
    return None


def _check_tls_pair(cert: Path, key: Path) -> None:
    """Load the certificate and key the way the server will, so a bad PEM or a mismatched pair is a
    clear start-up error naming the files."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"tls_cert {cert} and tls_key {key} cannot be used: {exc.strerror or exc} (both must "
                         "be PEM, the key the certificate's; `gateway cluster tls init` makes them)") from None


def check_node_certificate(cert: Path, key: Path, ca: Path, hostname: str | None = None) -> None:
    """Refuse a node certificate its peers would refuse: one the cluster CA did not issue (tls files of two
    `cluster tls init` runs mixed), one out of its validity, or (``hostname``: the host this node
    advertises) one for other names. The node trusted its peers and joined, but they could not verify
    it, and every miss through any node was a 503 naming it. Checked with a TLS handshake in memory,
    this node's certificate against its own CA file, as its peers will (intermediates included)."""
    import ssl

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = hostname is not None
    client.load_verify_locations(cafile=str(ca))
    pipes = [ssl.MemoryBIO(), ssl.MemoryBIO()]  # what the server reads, what the client reads
    near = client.wrap_bio(pipes[0], pipes[1], server_hostname=hostname)
    far = server.wrap_bio(pipes[1], pipes[0], server_side=True)
    for _ in range(10):  # a TLS 1.3 handshake takes two rounds; bounded all the same
        done = True
        for side in (near, far):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLCertVerificationError as exc:
                raise ValueError(_refused_certificate(cert, ca, hostname, exc)) from None
            except ssl.SSLError:
                return  # something else of TLS: the server's own start says what
        if done:
            return


_EXPIRED, _NOT_YET_VALID, _HOSTNAME_MISMATCH, _IP_MISMATCH = 10, 9, 62, 64  # OpenSSL's X509_V_ERR_*


def _refused_certificate(cert: Path, ca: Path, hostname: str | None, exc) -> str:
    reissue = ("issue a new one with `gateway cluster tls init --dir <the directory of the CA> --node "
               f"NAME={hostname or 'HOST'}` and give it to this node")
    if exc.verify_code in (_EXPIRED, _NOT_YET_VALID):
        from cryptography import x509

        try:
            issued = x509.load_pem_x509_certificate(cert.read_bytes())
            if exc.verify_code == _EXPIRED:
                when = f"expired on {issued.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            else:
                when = f"is valid only from {issued.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check this host's clock)"
        except ValueError:
            when = exc.verify_message
        return f"tls_cert {cert} {when}: peers would refuse this node; {reissue}"
    if exc.verify_code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
        return (f"tls_cert {cert} is not valid for {hostname}, the host this node advertises to its peers "
                f"({exc.verify_message}): they would refuse it. Set --advertise to a name the certificate holds, "
                f"or {reissue}")
    return (f"tls_cert {cert} was not issued by the CA in tls_ca {ca} ({exc.verify_message}): peers that trust "
            "that CA would refuse this node. Give it the certificate and key `gateway cluster tls init` made "
            "with that CA (the files of two runs mixed?)")


def _check_tls_ca(ca: Path) -> None:
    """Load the CA file the way peer connections will (membership.client_ssl_context)."""
    import ssl

    from cryptography import x509

    refused = ValueError(f"{ca} holds no CA certificate: give the cluster CA in PEM, the ca.pem that "
                         "`gateway cluster tls init` writes (not a key or a node's certificate)")
    try:
        ssl.create_default_context(cafile=str(ca))
        certificates = x509.load_pem_x509_certificates(ca.read_bytes())
    except (ssl.SSLError, ValueError):
        raise refused from None
    except OSError as exc:
        raise ValueError(f"{ca} cannot be read: {exc.strerror or exc}") from None
    # OpenSSL takes any certificate as a trust anchor; a node's own (CA:FALSE) verifies no peer, which
    # serve found out only at its first peer call, as a TLS error.
    if not any(_is_ca(certificate) for certificate in certificates):
        raise refused


def _is_ca(certificate) -> bool:
    from cryptography import x509

    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


class _Shadowed(PydanticBaseSettingsSource):
    """The config file's settings without those a flag or the environment gives. pydantic-settings
    merges tables across sources key by key: GATEWAY_CREDENTIALS='{"new": "..."}' added to the file's
    [credentials] instead of replacing them, so a key could not be revoked through the environment
    (and GATEWAY_BACKENDS kept the file's options of a backend it changed). A table, like any value,
    comes whole from the first source that has it (docs/configuration.md)."""

    def __init__(self, settings_cls, inner: PydanticBaseSettingsSource, above: tuple):
        super().__init__(settings_cls)
        self.inner, self.above = inner, above

    def get_field_value(self, field, field_name):  # not used: __call__ reads the inner source whole
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        taken = set().union(*(source() for source in self.above))
        return {name: value for name, value in self.inner().items() if name not in taken}


def load_settings(config_file: str | os.PathLike | None = None, **flags: Any) -> Settings:
    """Build the settings; ``flags`` are the command-line values actually given (None means not given)."""
    config_file = config_file or os.environ.get("GATEWAY_CONFIG")
    if config_file:
        path = Path(config_file)
        try:  # read by pydantic-settings further down, where a problem would be a traceback
            if path.is_dir():
                raise ConfigError(f"config file {config_file} is a directory: give the TOML file (--config, "
                                  "GATEWAY_CONFIG)")
            if not path.is_file():
                raise ConfigError(f"config file {config_file} "
                                  f"{'is not a regular file' if path.exists() else 'does not exist'}")
            with open(path, "rb"):
                pass
        except OSError as exc:  # a directory on the way, or the file, that this user may not read
            raise ConfigError(f"config file {config_file} cannot be read: {exc.strerror or exc} (it holds secrets: "
                              "keep it mode 600, owned by the user the gateway runs as)") from None
    given = {k: v for k, v in flags.items() if v is not None}

    class _Sourced(Settings):
        @classmethod
        def settings_customise_sources(
            cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file:
                sources.append(_Shadowed(settings_cls, TomlConfigSettingsSource(settings_cls, toml_file=config_file),
                                         above=(init_settings, env_settings)))
            return tuple(sources)

    try:
        return _Sourced(**given)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, _origins(given, config_file))) from None
    except ValueError as exc:  # TOML syntax errors, or a GATEWAY_* table or list that is not JSON
        env_field = re.search(r'field "(\w+)" from source "EnvSettingsSource"', str(exc))
        if env_field:
            name = env_field.group(1)
            raise ConfigError(f"invalid setting {name} (GATEWAY_{name.upper()}): not valid JSON (tables and lists "
                              "given in the environment are JSON, e.g. GATEWAY_CREDENTIALS='{\"key\": \"secret\"}')"
                              ) from None
        raise ConfigError(f"config file {config_file}: {exc}") from None


def config_table(config_file: str | os.PathLike) -> dict[str, Any]:
    """The config file's settings as written in it; {} when it cannot be read or is not TOML (for
    messages and for tools that must not fail on it: loading the settings says what is wrong)."""
    try:
        with open(config_file, "rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _origins(given: dict[str, Any], config_file: str | os.PathLike | None):
    """Where a top-level setting's value came from, for error messages: the environment or the
    config file say so (the value is there to be found); a command-line flag or a default names the
    setting and its environment variable, as --help does."""
    environment = {name.upper(): value for name, value in os.environ.items()}
    table = config_table(config_file) if config_file else {}

    def origin(name: str, value: bool = True) -> str:
        variable = f"GATEWAY_{name.upper()}"
        secret = not value or name in SECRET_FIELDS or name == "credentials"  # never echoed
        if name not in given and variable in environment:
            return f"{variable} in the environment" if secret else \
                f"{variable}={environment[variable]!r} in the environment"
        if name not in given and name in table:
            return f"{name} in {config_file}" if secret else f"{name} = {_as_toml(table[name])} in {config_file}"
        return variable

    return origin


def _as_toml(value: Any) -> str:
    """A value as the file has it (true, "text"), not as Python shows it (True, 'text')."""
    import json

    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        return str(value)  # nan, inf, -inf: TOML's words too
    if isinstance(value, (bool, str, int, float)):
        return json.dumps(value)
    return repr(value)


def _suggest(name: str) -> str:
    """What to do about an unknown top-level setting: the closest real one, else where the list is."""
    import difflib

    close = difflib.get_close_matches(name, list(Settings.model_fields), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else "not a gateway setting "
    return f"{hint}(every setting is listed in docs/configuration.md)"


def _explain(exc: ValidationError, origin=lambda name, value=True: f"GATEWAY_{name.upper()}") -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if not where:  # a check across settings: its message names them
            lines.append(f"invalid settings: {message}")
            continue
        if error["type"] == "extra_forbidden" and "." not in where:
            # A typo or a setting of another version: never echo its value (it may be a misspelt secret).
            lines.append(f"unknown setting {origin(where, value=False)}: {_suggest(where)}")
            continue
        source = f" ({origin(where)})" if "." not in where else ""
        lines.append(f"invalid setting {where}{source}: {message}")
    return "\n".join(lines)
