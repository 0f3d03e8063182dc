"""The ``natkit`` command: one subcommand per job, one module per job.

To add a command: write ``natkit/cli/<job>.py`` with a ``@click.command(...,
cls=_OneLineCommand)`` (or ``@click.group(..., cls=_OneLineGroup)``) that
imports its heavy dependencies inside the function (``natkit --help`` must
start fast), import the module below and add one ``main.add_command`` line.
"""

import click

from natkit import __version__
from natkit.cli import (
    admin,
    audit,
    backup,
    bench,
    credentials,
    ice,
    lab,
    probe,
    serve,
    stun,
    supply,
    turn,
    users,
)
from natkit.cli._common import _OneLineGroup
from natkit.health import health


@click.group(
    cls=_OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="natkit")
def main() -> None:
    """natkit: NAT traversal toolkit (STUN, TURN, RFC 5780, ICE) and server."""


main.add_command(serve.serve)
main.add_command(stun.stun)
main.add_command(bench.bench)
main.add_command(users.users_group)
main.add_command(credentials.credentials)
main.add_command(credentials.secrets_group)
main.add_command(turn.turn)
main.add_command(probe.probe)
main.add_command(lab.lab)
main.add_command(ice.ice)
main.add_command(admin.admin_group)
main.add_command(audit.audit_group)
main.add_command(backup.backup_group)
main.add_command(supply.inventory)
main.add_command(supply.release_gate)
main.add_command(health)
