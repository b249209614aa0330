"""The `batchserve` command: the one place that knows every subcommand.

Each package owns its commands and adds them to the parser through its `register`; importing a
command module stays cheap (heavy libraries load only when a command runs).
"""

from __future__ import annotations

import argparse
import sys

from batchserve.client import commands as client_commands
from batchserve.deploy import cli as deploy_commands
from batchserve.events import commands as events_commands
from batchserve.events import drift_commands
from batchserve.jobs import commands as queue_commands
from batchserve.loadtest import commands as loadtest_commands
from batchserve.model_repo import commands as model_commands
from batchserve.server import cli as serve_command
from batchserve.server import model_control
from batchserve.server.auth import commands as key_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchserve", description="Dynamically batched image classification server.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_command.register(sub)  # serve
    models = sub.add_parser("models", help="build and list models; load and unload them on a running server")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    model_commands.register(models_sub)  # models build, models list
    model_control.register(models_sub)  # models load, models unload
    events_commands.register(sub)  # db upgrade, stats
    drift_commands.register(sub)  # drift save-reference
    key_commands.register(sub)  # keys create, keys list, keys revoke
    loadtest_commands.register(sub)  # loadtest, bench
    deploy_commands.register(sub)  # deploy aws, deploy gcp
    queue_commands.register(sub)  # queue up|down|status|redrive, worker
    client_commands.register(sub)  # classify
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
