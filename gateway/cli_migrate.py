"""`gateway migrate --to DIR`: copy this server's local cv-storage onto shared storage (docs/migration.md)."""

from __future__ import annotations

import sys

import click

from .cli import _fail, settings_options
from .cli_ops import interrupted, ops_settings, stop_cleanly_on_sigterm
from .ops.stores import OpsError


@click.command()
@settings_options
@click.option("--to", "target", required=True, metavar="DIR",
              help="The shared storage's mount point (the directory the sharedfs backend will use as root).")
@click.option("--backend", metavar="NAME", help="The local backend to migrate when the settings have several.")
@click.option("--dry-run", is_flag=True, help="Say what a pass would do; change nothing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress line; errors and the summary still print.")
def migrate(config_file, target, backend, dry_run, quiet, **flags) -> None:
    """Copy this server's local store onto shared storage, merging with what is there.

    Repeatable while the gateway serves: run it once online, stop the gateway, run it again (the
    final pass copies what changed), then switch the backend to type "sharedfs". On the target an
    object is never replaced by an older version; objects deleted here since the last pass are
    removed from the target when no other server has written them there since. Exit code 0: every
    object of this store is on the target; 1: some are not, or could not be checked (see the summary);
    2: bad input, or a full disk stopped the pass (the target's, or the store's, which holds the
    journal), or a target that fails (an I/O error).
    """
    from .ops.migrate import migrate as run_pass
    from .ops.migrate_report import next_steps, summary

    settings = ops_settings(config_file, **flags)
    stop_cleanly_on_sigterm()
    try:
        result = run_pass(settings, target, backend=backend, dry_run=dry_run, quiet=quiet)
    except OpsError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        interrupted("the pass was stopped; every copy made so far is whole and in the journal: run the same "
                    "command again to go on")
    click.echo(summary(result))
    if result.complete and not dry_run:
        click.echo(next_steps(result))
    sys.exit(0 if result.complete else 1)
