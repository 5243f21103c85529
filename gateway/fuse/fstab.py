"""``mount.gateway``: the helper mount(8) runs for filesystems of type ``gateway``.

An /etc/fstab line such as

    http://127.0.0.1:8086  /mnt/cv  gateway  _netdev,config=/etc/cv-gateway/mount.toml,allow_other,uid=1000  0 0

makes mount(8) run ``mount.gateway http://127.0.0.1:8086 /mnt/cv -o _netdev,config=...``.
The helper turns the -o options into ``gateway mount`` flags; options that
only mount(8) or systemd care about are dropped. Install the helper where
mount(8) looks for it: ``ln -s $(which mount.gateway) /sbin/mount.gateway``.
"""

from __future__ import annotations

import sys

# Options meant for mount(8), systemd or the kernel's generic mount flags: not ours.
IGNORED = {"rw", "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev", "nofail",
           "exec", "noexec", "suid", "nosuid", "dev", "nodev", "atime", "noatime", "relatime", "nodiratime",
           "sync", "async", "loop"}
IGNORED_PREFIXES = ("x-", "comment=", "_")
FLAGS = {"ro": "--read-only", "read_only": "--read-only", "allow_other": "--allow-other",
         "foreground": "--foreground", "debug": "--debug"}
VALUED = {"uid", "gid", "umask", "attr_ttl", "dir_ttl", "timeout", "config", "spool_dir", "spool_size",
          "log_file", "access_key", "secret_key", "direct_io_min", "statahead",
          "local_socket", "ca_bundle"}


class UsageError(Exception):
    pass


USAGE = "usage: mount.gateway ENDPOINT MOUNTPOINT [-sfnv] [-o option[,option...]]"


def mount_args(argv: list[str]) -> tuple[list[str], bool, bool]:
    """Turn ``SPEC DIR [-sfnv] [-o opts] [-t type]`` into ``gateway mount`` arguments.

    Returns (arguments, fake, verbose). Unknown options are an error unless -s (sloppy) is given.
    """
    positional, options = [], []
    fake = verbose = sloppy = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-o":
            if i + 1 >= len(argv):
                raise UsageError("-o needs a value")
            options.extend(o for o in argv[i + 1].split(",") if o)
            i += 2
            continue
        if arg.startswith("-o") and len(arg) > 2:
            options.extend(o for o in arg[2:].split(",") if o)
        elif arg in ("-t", "-N"):
            i += 1  # the type (gateway) and the namespace: nothing to do
        elif arg.startswith("-") and len(arg) > 1:
            for letter in arg[1:]:
                if letter == "f":
                    fake = True
                elif letter == "v":
                    verbose = True
                elif letter == "s":
                    sloppy = True
                elif letter != "n":  # -n: no /etc/mtab; nothing to write anyway
                    raise UsageError(f"unknown flag -{letter}")
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 2:
        raise UsageError(USAGE)
    args = ["mount", *positional]
    for option in options:
        name, eq, value = option.partition("=")
        if name in IGNORED or name.startswith(IGNORED_PREFIXES):
            continue
        if name in FLAGS and not eq:
            args.append(FLAGS[name])
        elif name in VALUED and eq:
            args += ["--" + name.replace("_", "-"), value]
        elif not sloppy:
            raise UsageError(f"unknown mount option {option!r} (known: {', '.join(sorted([*FLAGS, *VALUED]))})")
    return args, fake, verbose


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(f"{USAGE}\n-o options: {', '.join(sorted([*FLAGS, *VALUED]))}\n(the same as `gateway mount --help`; "
              "unknown options are an error unless -s)")
        return
    try:
        args, fake, verbose = mount_args(argv)
    except UsageError as exc:
        print(f"mount.gateway: {exc}", file=sys.stderr)
        sys.exit(1)  # mount(8): incorrect invocation
    if verbose or fake:
        print("gateway " + " ".join(_mask(args)), file=sys.stderr)
    if fake:
        return
    from ..cli import main as gateway_main

    gateway_main.main(args=args, prog_name="gateway", standalone_mode=True)


def _mask(args: list[str]) -> list[str]:
    masked = list(args)
    for i, arg in enumerate(masked[:-1]):
        if arg == "--secret-key":
            masked[i + 1] = "****"
    return masked
