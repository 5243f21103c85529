"""Mount and unmount: check the gateway, go to the background, run the FUSE loop.

Unmounting: ``fusermount -u MOUNTPOINT`` (or ``umount`` as root), SIGINT or
SIGTERM to the mount process. libfuse installs the signal handlers (mfusepy
resets SIGINT to its default first so that libfuse takes it over); its loop
then ends, the kernel mount goes away, and ``destroy`` uploads what is still
dirty and removes the spool.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..config import MOUNT_KEYS_FROM
from .client import ObjectClient, StoreError, Unreachable
from .fs import GatewayFS, MountOptions
from .readahead import raise_read_ahead_when_mounted

log = logging.getLogger("gateway.fuse")

# libfuse 3's worker threads (its own default): FUSE requests served at once. Fewer made sequential
# reads a little faster but let one slow call (an upload at close) hold up other programs sooner
# (docs/fuse.md, "More sequential-read experiments").
MAX_THREADS = 10


class MountError(Exception):
    """The mount cannot start; the message says why and what to do."""


@dataclass
class MountConfig:
    endpoint: str
    mountpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    timeout: float = 15.0
    foreground: bool = False
    debug: bool = False
    allow_other: bool = False
    log_file: str | None = None
    ca_bundle: str | None = None  # the CA file an https:// gateway is verified with (None: the system's)
    fs: MountOptions = field(default_factory=MountOptions)


def fuse_options(config: MountConfig, fuse_major: int) -> dict:
    """Keyword options for mfusepy.FUSE (each becomes ``-o name[=value]``)."""
    opts = config.fs
    options = {
        "fsname": f"gateway:{config.endpoint}", "subtype": "gateway",
        "attr_timeout": opts.attr_ttl, "entry_timeout": opts.attr_ttl, "negative_timeout": opts.attr_ttl,
        "default_permissions": True,  # the kernel checks modes and owners against the caller
        # No auto_cache (size and mtime, whole seconds here): open keeps the page cache by version
        # (GatewayFS.keeps_cache).
    }
    if fuse_major == 2:
        options.update(big_writes=True, atomic_o_trunc=True, max_read=1024 * 1024, max_readahead=1024 * 1024)
    else:
        # libfuse 3.14's fuse_main (Debian 12) hands its loop max_idle_threads as parsed, -1 ("never
        # end an idle thread") unless given, and the setter refuses that value with a warning worded as
        # if it were max_threads: "Ignoring invalid max threads value 4294967295 > max (100000)." at every
        # mount (libfuse issue #1003). Both said explicitly: at most MAX_THREADS threads, libfuse's
        # default, and as many may be idle, so no thread is ever ended (what -1 meant).
        options.update(max_threads=MAX_THREADS, max_idle_threads=MAX_THREADS)
    if opts.read_only:
        options["ro"] = True
    if config.allow_other:
        options["allow_other"] = True
    return options


def check_gateway(config: MountConfig) -> None:
    """Fail early on refused credentials; only warn when the gateway is not up (yet)."""
    client = ObjectClient(config.endpoint, config.access_key, config.secret_key, region=config.region,
                          timeout=min(config.timeout, 10.0), pool_size=1, ca_bundle=config.ca_bundle)
    try:
        client.list_buckets()
    except Unreachable as exc:
        refused = _refused_certificate(config, str(exc))
        if refused:  # no retry makes it trusted: every operation would be EIO
            raise MountError(refused) from None
        log.warning("%s; mounting anyway: operations fail with EIO until it answers", exc)
    except StoreError as exc:
        raise MountError(f"the gateway at {config.endpoint} refused the request: {exc}. "
                         f"Check the keys the mount signs with: {MOUNT_KEYS_FROM}.") from None
    finally:
        client.close()


def _refused_certificate(config: MountConfig, failure: str) -> str:
    """What to do about the gateway's certificate the mount refused, by OpenSSL's reason ("" when the
    failure was not about the certificate)."""
    if "CERTIFICATE_VERIFY_FAILED" not in failure:
        return ""
    host = urlsplit(config.endpoint).hostname
    if "mismatch" in failure:  # Hostname mismatch, IP address mismatch
        return (f"the certificate of the gateway at {config.endpoint} is not for {host} ({failure}): mount it by a "
                "name or address the certificate holds (`openssl x509 -noout -ext subjectAltName -in CERT`)")
    if "expired" in failure or "not yet valid" in failure:
        return (f"the certificate of the gateway at {config.endpoint} is out of its validity ({failure}): the "
                "gateway needs a new one (or this host's clock is wrong)")
    given = f"the CA in {config.ca_bundle}" if config.ca_bundle else "the system's CAs"
    return (f"the certificate of the gateway at {config.endpoint} is not trusted by {given} ({failure}): give the "
            "CA that issued it with --ca-bundle (a cluster's: the ca.pem of `gateway cluster tls init`)")


def _check_mountpoint(path: str) -> None:
    if not os.path.isdir(path):
        raise MountError(f"mount point {path} is not a directory: create it first")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point: unmount it first (fusermount -u {path})")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: install fuse3 (make test-deps) or load the fuse module")


def _daemonize(config: MountConfig, wait: float = 30.0) -> bool:
    """Fork; the parent waits until the mount is up (True) or the child failed, then returns.

    Returns False in the child, which goes on to run the mount.
    """
    pid = os.fork()
    if pid == 0:
        os.setsid()
        target = os.open(config.log_file or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(target, 1)
        os.dup2(target, 2)
        return False
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            raise MountError(f"the mount process exited with status {os.waitstatus_to_exitcode(status)}"
                             + (f"; see {config.log_file}" if config.log_file else "; rerun with --foreground"))
        if os.path.ismount(config.mountpoint):
            return True
        time.sleep(0.05)
    raise MountError(f"{config.mountpoint} was not mounted within {wait:.0f}s (mount process {pid} still runs)")


def _setup_logging(config: MountConfig) -> None:
    handlers = None
    if config.log_file and config.foreground:
        handlers = [logging.FileHandler(config.log_file)]
    logging.basicConfig(level=logging.DEBUG if config.debug else logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not config.debug:
        logging.getLogger("mfusepy").setLevel(logging.WARNING)


def _prefer_libfuse3() -> None:
    """Load libfuse 3 unless FUSE_LIBRARY_NAME says otherwise (mfusepy itself prefers libfuse 2).

    libfuse 3 lets the kernel send reads of up to 1 MiB (max_pages); libfuse 2 caps them at
    128 KiB, which costs a FUSE round trip per 128 KiB (docs/fuse.md).
    """
    if "FUSE_LIBRARY_NAME" not in os.environ and ctypes.util.find_library("fuse3"):
        os.environ["FUSE_LIBRARY_NAME"] = "fuse3"


def _load_binding():
    """mfusepy with libfuse loaded (libfuse 3 preferred); MountError saying what to install."""
    _prefer_libfuse3()
    try:
        import mfusepy  # the binding is loaded only here, never by the core modules
    except ImportError as exc:
        raise MountError(f"the FUSE binding mfusepy is not installed ({exc}): pip install mfusepy, or reinstall "
                         "cv-gateway (pip install -e . in its checkout)") from None
    except OSError as exc:  # mfusepy found no libfuse
        raise MountError(f"libfuse could not be loaded ({exc}): install it, e.g. apt-get install fuse3") from None
    return mfusepy


def run(config: MountConfig) -> int:
    """Mount and serve until unmounted; in the background unless ``config.foreground``."""
    _check_mountpoint(config.mountpoint)
    _setup_logging(config)
    check_gateway(config)
    mfusepy = _load_binding()  # before going to the background, so a missing libfuse is said here
    if not config.foreground and _daemonize(config):
        return 0

    from .operations import GatewayFUSE, GatewayOperations

    _setup_logging(config)
    # FUSE requests wait for the GIL while I/O threads parse responses; a shorter switch interval
    # (default 5 ms) cuts that wait (see docs/fuse.md).
    sys.setswitchinterval(0.0005)
    workers = config.fs.workers
    client = ObjectClient(config.endpoint, config.access_key, config.secret_key, region=config.region,
                          timeout=config.timeout, pool_size=16 + workers, ca_bundle=config.ca_bundle)
    fs = GatewayFS(client, config.fs)
    log.info("mounting %s on %s (libfuse %d.%d)", config.endpoint, config.mountpoint,
             mfusepy.fuse_version_major, mfusepy.fuse_version_minor)
    if config.fs.read_ahead_kib:
        raise_read_ahead_when_mounted(config.mountpoint, config.fs.read_ahead_kib)
    try:
        GatewayFUSE(GatewayOperations(fs), config.mountpoint, raw_fi=True, foreground=True, debug=config.debug,
                    nothreads=False, **fuse_options(config, mfusepy.fuse_version_major))
    except RuntimeError as exc:
        if os.path.ismount(config.mountpoint):
            log.error("FUSE stopped with an error (%s); unmount with fusermount -u %s", exc, config.mountpoint)
            return 1
        if not fs.mounted:  # libfuse said why (e.g. /dev/fuse: Permission denied) on stderr
            log.error("could not mount %s (%s): see libfuse's message above", config.mountpoint, exc)
            return 1
        # libfuse 3 reports the signal that ended its loop (SIGINT, SIGTERM) as a failure; the unmount was clean.
        log.info("FUSE loop ended (%s)", exc)
    finally:
        fs.spool_dir.cleanup()
    log.info("unmounted %s", config.mountpoint)
    return 0


def main_exit(config: MountConfig) -> None:
    try:
        sys.exit(run(config))
    except MountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(32)  # mount(8): mount failure
