"""The ``agentshards`` command: the group, its global flags, and the commands of each module.

Commands are thin (parse, call one library function, print, exit with a code): see ``output.py`` for
the shared options, the JSON contract and the exit codes; ``docs/cli.md`` is the reference.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from .. import __version__
from . import commands_agent, commands_archive, commands_fleet, commands_nodes, commands_tools, commands_view
from .output import CTX, FAILED, INTERRUPTED, fail


class _Group(click.Group):
    """The last line of defence: an error nobody expected still prints one line, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:  # Ctrl-C anywhere: one line, exit 130 (a fleet says more on its own)
            click.echo("interrupted", err=True)
            sys.exit(INTERRUPTED)
        except Exception as exc:  # e.g. a botocore error nobody mapped: still one line (and --json's document)
            logging.getLogger("agentshards").debug("unexpected error", exc_info=True)
            fail(exc, FAILED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agentshards")
@click.option("-v", "--verbose", count=True, help="More log lines (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the result.")
def main(verbose: int, quiet: bool) -> None:
    """Durable AI agents, one SQLite file each, replicated to S3 by Litestream.

    Shell completion: eval "$(_AGENTSHARDS_COMPLETE=bash_source agentshards)" (or zsh_source, fish_source).
    """
    CTX.quiet = quiet
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    # -v is for watching a long run (a node, a fleet): its lines say when; the default stays terse
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s: %(message)s" if verbose else
                        "%(levelname)s: %(message)s")


for module in (commands_fleet, commands_nodes, commands_agent, commands_archive, commands_view, commands_tools):
    for command in module.COMMANDS:
        main.add_command(command)
