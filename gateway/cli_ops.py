"""`gateway backup` and `gateway restore` (docs/operations.md)."""

from __future__ import annotations

import os
import signal
import sys

import click

from .cli import _fail, build_settings, settings_options
from .ops.stores import OpsError


class _Terminated(KeyboardInterrupt):
    """SIGTERM (systemd's stop, `kill`), raised where the tool is, so that it stops as on Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def stop_cleanly_on_sigterm() -> None:
    """Make SIGTERM stop a long operation the way Ctrl-C does: its clean-up runs (an unfinished
    archive or temp file is removed, the journal stays whole) and interrupted() says what to do.
    Without this, SIGTERM ended the process on the spot, leaving what a kill -9 leaves."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def interrupted(message: str) -> None:
    """Ctrl-C or SIGTERM: exit 130 or 143, as shells report those signals, never a code that means "done"."""
    exc = sys.exc_info()[1]
    terminated = isinstance(exc, _Terminated)
    click.echo(f"\nerror: {'stopped by SIGTERM' if terminated else 'interrupted'}: {message}", err=True)
    sys.exit(143 if terminated else 130)


def ops_settings(config_file, **flags):
    """The node's settings for a tool that serves nothing: credentials are not needed here. A cluster
    node given no --role takes the role the registry has for it, as `gateway serve` does."""
    from .ops.peers import with_registry_role

    settings = build_settings(config_file, **_without_credentials(flags))
    try:
        return with_registry_role(settings)
    except OpsError as exc:
        _fail(str(exc))


def _without_credentials(flags: dict) -> dict:
    if flags.get("access_key") is None and flags.get("secret_key") is None:
        flags["allow_anonymous"] = flags.get("allow_anonymous") or True
    return flags


@click.command()
@settings_options
@click.option("-o", "--objects-only", is_flag=True,
              help="Only this server's objects: the backup of a redundant server in local mode.")
@click.option("--include-shared", is_flag=True,
              help="With -o: this node's shared stores too (automatic when the registry says the primary keeps "
                   "its objects on its own disk, so its full backup does not hold the share).")
@click.option("-q", "--quiet", is_flag=True, help="No progress line; the summary still prints.")
@click.argument("output", type=click.Path(dir_okay=True, allow_dash=True))
def backup(config_file, objects_only, include_shared, quiet, output, **flags) -> None:
    """Write a backup archive to OUTPUT (a file, a directory to name it in, or - for stdout).

    Without -o, a full backup: every file store, the config file, the TLS files and the SQLite
    registry; taken on the primary (or a stand-alone gateway). With -o, this server's own objects.
    The gateway can keep serving meanwhile; each object is copied whole, in one version.

    Give it the settings the node's `gateway serve` runs with (--config, --data-dir, --role, ...): they
    say which stores and which node to back up; options only a server uses are accepted and ignored.

    Exit status: 0 done; 1 done, but some object files are damaged (their header does not parse, or the
    file is not as long as its header says: in the archive as they are, and listed); 2 nothing written (the message says why); 130 stopped with Ctrl-C, 143 with SIGTERM.
    """
    from .ops.backup import create_backup

    settings = ops_settings(config_file, **flags)
    stop_cleanly_on_sigterm()
    try:
        if include_shared and not objects_only:
            _fail("--include-shared goes with -o (a full backup holds every file store already)")
        result = create_backup(settings, output, objects_only=objects_only,
                               config_file=config_file or os.environ.get("GATEWAY_CONFIG"), quiet=quiet,
                               include_shared=include_shared)
    except OpsError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"the backup failed: {exc}; {_unfinished(output, exc)}")
    except KeyboardInterrupt as exc:
        interrupted(f"the backup was stopped; {_unfinished(output, exc)}")
    if result.not_objects:
        raise SystemExit(1)


def _unfinished(output: str, exc: BaseException) -> str:
    """What became of the archive of a backup that failed: its file removed, or why not (create_backup
    tells, on the exception); standard output is not ours to clean up, and what reached it must not
    pass for a backup."""
    if output == "-":
        return "what reached standard output is an unfinished archive (restore refuses it as cut short): delete it"
    return getattr(exc, "unfinished_archive", "no archive was begun")


@click.command()
@settings_options
@click.option("--check", is_flag=True, help="Only verify the archive (every checksum, nothing cut short).")
@click.option("--overwrite", is_flag=True,
              help="Replace objects that differ from the backup's copy (default: keep them and list them). "
                   "Node files (config, TLS) that exist are kept either way.")
@click.option("--force", is_flag=True,
              help="Restore even where the backup does not belong (a full backup on a non-primary, "
                   "an objects-only backup on another server).")
@click.option("-q", "--quiet", is_flag=True, help="No progress line; the summary still prints.")
@click.argument("archive", type=click.Path(dir_okay=False, allow_dash=True))
def restore(config_file, check, overwrite, force, quiet, archive, **flags) -> None:
    """Verify ARCHIVE completely, then restore it to this node's stores.

    Objects already there with the same bytes are skipped; objects that differ (written after the
    backup) are kept and listed unless --overwrite; damaged object files are replaced by the backup's
    copy and listed. Nothing the backup lacks is deleted. A running gateway may stay up: each file
    appears whole, by rename. Give it the settings the node's `gateway serve` runs with (--config,
    --data-dir, --role, ...): they say where the objects go; with neither --config nor --data-dir,
    ./cv-storage must exist.

    Exit status: 0 restored (kept objects are listed, not an error); 2 nothing restored, or the
    restore stopped (the message says why; the same command finishes the job); 130 stopped with
    Ctrl-C, 143 with SIGTERM (run it again).
    """
    from .ops.archive import check_archive, check_rereadable, peek_manifest
    from .ops.restore import (
        check_destination,
        describe_os_error,
        remember_restored_node_id,
        restore_missing_settings_files,
    )
    from .ops.restore import restore as restore_archive

    config_file = config_file or os.environ.get("GATEWAY_CONFIG")
    named = bool(config_file or flags.get("data_dir") or os.environ.get("GATEWAY_DATA_DIR"))
    stop_cleanly_on_sigterm()
    try:
        if archive == "-" and not os.path.exists(archive):
            archive = "/dev/stdin"  # as `gateway backup -` writes to standard output
        if not check:
            check_rereadable(archive)
            manifest = peek_manifest(archive)
            if manifest is not None:
                _check_destination_early(manifest, config_file, named, force, flags)
        info = check_archive(archive, quiet=quiet)
        click.echo(info.describe(), err=True)
        for number, line in enumerate(info.damage_warnings()):
            click.echo(f"warning: {line}" if number == 0 else line, err=True)
        if check:
            return
        if config_file and not os.path.exists(config_file) and not info.config:
            _fail(f"config file {config_file} does not exist, and this {info.kind} backup holds none: "
                  "give an existing config, or none")
        if info.config and not config_file and not flags.get("data_dir"):
            _fail(f"this full backup holds the config file {info.config[0]}: pass --config {info.config[0]} "
                  "(restored there first if it is missing) so the objects go to the stores it names, "
                  "or --data-dir to restore them into that cv-storage directory")
        created = restore_missing_settings_files(info, config_file)
        try:
            settings = ops_settings(config_file, **flags)
            mapping, notes = check_destination(info, settings, force)
            if not named:
                _refuse_default_root(mapping)
        except (OpsError, SystemExit):
            for path in created:  # refused before anything else was written: leave no trace
                os.unlink(path)
            raise
        for note in notes:
            click.echo(f"note: {note}", err=True)
        restore_archive(archive, info, settings, mapping, overwrite=overwrite, config_file=config_file, quiet=quiet)
        remember_restored_node_id(info, settings)
    except OpsError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"the restore stopped: {describe_os_error(exc)}. Every file restored so far is whole; run the same "
              "command again once that is fixed, it skips what is already there")
    except KeyboardInterrupt:
        interrupted("the restore was stopped. Every file restored so far is whole; run the same command again "
                     "to finish, it skips what is already there")


def _check_destination_early(manifest: dict, config_file, named: bool, force: bool, flags: dict) -> None:
    """Refuse, before the whole archive is read (hours for a large one), a destination that is wrong
    whatever the archive holds: another node or kind (the manifest, its first member, says which),
    a share that is not mounted, a store root that is a file or cannot be written, no store named.
    Only looks; the same checks run again after the archive is checked, and nothing is written
    before that. Skipped when the settings cannot be read yet (a config file the archive restores)."""
    from .config import ConfigError, load_settings
    from .ops.archive import ArchiveInfo
    from .ops.peers import with_registry_role
    from .ops.restore import check_destination

    if config_file and not os.path.exists(config_file):
        return
    try:
        settings = load_settings(config_file, **_without_credentials(dict(flags)))
    except ConfigError as exc:
        if _settings_file_missing(manifest, config_file):
            return  # e.g. a TLS file the archive restores is missing: said after the check
        _fail(str(exc))  # a wrong setting is wrong whatever the archive holds: said now, not in hours
    mapping, _ = check_destination(ArchiveInfo(manifest, {}), with_registry_role(settings), force)
    if not named:
        _refuse_default_root(mapping)


def _settings_file_missing(manifest: dict, config_file) -> bool:
    """Whether the settings may fail to load for a file that the restore puts back first: a full
    backup holds the node's TLS files, restored (with a --config) where the config names them when
    missing there (restore_missing_settings_files)."""
    from .ops.restore import configured_path

    if manifest.get("kind") != "full" or not config_file:
        return False
    paths = [configured_path(config_file, what) for what in ("tls_cert", "tls_key", "tls_ca")]
    return any(path and not os.path.exists(path) for path in paths)


def _refuse_default_root(mapping: dict) -> None:
    """With neither --config nor --data-dir, the store is ./cv-storage: used when it exists, as backup
    and migrate do, never created (a forgotten --config would restore into the current directory)."""
    for store in mapping.values():
        if store.root == os.path.abspath("cv-storage") and not os.path.exists(store.root):
            raise OpsError(f"{store.root} does not exist: no --config or --data-dir was given, so the store would be "
                           "./cv-storage in the current directory. Pass the --config (or --data-dir) the node's "
                           "`gateway serve` runs with; a full backup restores a missing config file there first. "
                           "Nothing was restored")


@click.command("repair")
@settings_options
@click.option("--bucket", "buckets", multiple=True, help="Walk only this bucket (repeat for several; default: all).")
@click.option("--dry-run", is_flag=True, help="Say which keys have an older copy; retire nothing.")
@click.option("--page-size", type=click.IntRange(1, 1000), default=1000, show_default=True,
              help="Keys the node lists from every storing node per request.")
@click.option("-q", "--quiet", is_flag=True, help="No progress line; the findings and the summary still print.")
def repair(config_file, buckets, dry_run, page_size, quiet, **flags) -> None:
    """Find and retire copies that an overwrite could not retire (local mode).

    In local mode a key lives on one node; an overwrite through another node retires the older copy,
    or leaves that to the registry for a node that is down. A copy survives only when the registry
    was down too and the writing node restarted first, or when a node's files were put back by hand
    (an old disk, a copied directory); reads through that node then return the old version. This
    walks every bucket through this node, page by page: keys that two nodes hold in different
    versions keep the newest (last writer wins, as for overwrites) and lose the older copies.
    Listings retire what they happen to see anyway; run this after a registry outage, or after
    putting files back by hand, to be sure.

    Give it the settings the node's `gateway serve` runs with (its cluster secret, --advertise, the
    TLS files); the node must be running. Exit status: 0 every node checked; 1 done, but a node
    could not be reached or a copy could not be read (run it again when all are up); 2 not done
    (the message says why).
    """
    from .ops.repair import RepairError
    from .ops.repair import repair as run_repair

    settings = ops_settings(config_file, **flags)
    try:
        result = run_repair(settings, buckets, dry_run=dry_run, quiet=quiet, page_size=page_size)
    except RepairError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        interrupted("the repair was stopped; what it retired stays retired, run it again to finish")
    if not result.complete:
        raise SystemExit(1)
