"""`batchserve queue up|down|status|redrive` and `batchserve worker`.

Heavy libraries (aioboto3, ONNX Runtime) load only when a command runs, so building the CLI's
parser stays cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from batchserve.jobs.config import QueueConfig, QueueSettings, WorkerSettings
from batchserve.jobs.options import QUEUE_OPTIONS, WORKER_OPTIONS, exported_settings, queue_settings, worker_settings
from batchserve.serving.options import add_flags

Settings = TypeVar("Settings", QueueSettings, WorkerSettings)


def register(sub: argparse._SubParsersAction) -> None:
    queue = sub.add_parser("queue", help="create, inspect and remove the buckets and queues of queue mode")
    actions = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    up = _queue_parser(actions, "up", "create the missing buckets and queues (idempotent); prints the settings "
                                      "to export as KEY=VALUE lines")
    up.set_defaults(func=_up)
    down = _queue_parser(actions, "down", "remove the queues (reply queues of web instances too) and the buckets")
    down.add_argument("--keep-buckets", action="store_true", help="remove the queues only, keep images and results")
    down.set_defaults(func=_down)
    status = _queue_parser(actions, "status", "messages waiting, in flight and dead-lettered, per queue")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(func=_status)
    redrive = _queue_parser(actions, "redrive", "move dead-lettered requests back to the request queue")
    redrive.add_argument("--max", type=int, default=None, metavar="N", help="move at most N messages")
    redrive.set_defaults(func=_redrive)

    worker = sub.add_parser("worker", help="classify images from the request queue (queue mode's app tier)")
    add_flags(worker, WORKER_OPTIONS)
    worker.set_defaults(func=_worker)


def _queue_parser(actions: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help, description=help)
    parser.add_argument("--name", dest="queue_name_alias", metavar="NAME",
                        help="deployment name (same as --queue-name) [env BATCHSERVE_QUEUE_NAME]")
    add_flags(parser, QUEUE_OPTIONS)
    return parser


def _settings(read: Callable[[argparse.Namespace], Settings], args: argparse.Namespace,
              command: str) -> Settings | None:
    if getattr(args, "queue_name_alias", None) and args.queue_name is None:
        args.queue_name = args.queue_name_alias
    try:
        settings = read(args)
        settings.queue.names  # noqa: B018 - refuses a missing name now, with the flag to pass
    except ValueError as exc:
        print(f"batchserve {command}: {exc}", file=sys.stderr)
        return None
    return settings


def _queue_config(args: argparse.Namespace) -> QueueConfig | None:
    settings = _settings(queue_settings, args, f"queue {args.queue_command}")
    return None if settings is None else settings.queue


def _run_queue_command(args: argparse.Namespace, action: Any) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from batchserve.jobs.aws import connect
    from batchserve.jobs.errors import QueueModeSetupError

    config = _queue_config(args)
    if config is None:
        return 2

    async def run() -> int:
        async with connect(config) as aws:
            return int(await action(aws, config))

    try:
        return asyncio.run(run())
    except (BotoCoreError, ClientError, QueueModeSetupError, OSError) as exc:
        print(f"batchserve queue {args.queue_command}: {exc}", file=sys.stderr)
        return 1


def _up(args: argparse.Namespace) -> int:
    from batchserve.jobs import resources

    async def action(aws: Any, config: QueueConfig) -> int:
        changes = await resources.up(aws, config)
        for name in changes.created:
            print(f"created {name}", file=sys.stderr)
        for name in changes.kept:
            print(f"exists  {name}", file=sys.stderr)
        for env, value in exported_settings(config).items():
            print(f"{env}={value}")
        return 0

    return _run_queue_command(args, action)


def _down(args: argparse.Namespace) -> int:
    from batchserve.jobs import resources

    async def action(aws: Any, config: QueueConfig) -> int:
        changes = await resources.down(aws, config.names, keep_buckets=args.keep_buckets)
        for name in changes.removed:
            print(f"removed {name}")
        for name in changes.absent:
            print(f"absent  {name}")
        return 0

    return _run_queue_command(args, action)


def _status(args: argparse.Namespace) -> int:
    from batchserve.jobs import resources

    async def action(aws: Any, config: QueueConfig) -> int:
        found = await resources.depths(aws, config.names)
        if args.json:
            print(json.dumps({"queues": [vars(d) for d in found]}, indent=2))
        else:
            width = max([len("queue"), *(len(d.name) for d in found)])
            print(f"{'queue':<{width}}  {'waiting':>8}  {'in flight':>9}  {'delayed':>7}")
            for d in found:
                print(f"{d.name:<{width}}  {d.visible:>8}  {d.in_flight:>9}  {d.delayed:>7}")
        missing = set(config.names.queues) - {d.name for d in found}
        if missing:
            print(f"missing: {', '.join(sorted(missing))} (run `batchserve queue up`)", file=sys.stderr)
            return 1
        return 0

    return _run_queue_command(args, action)


def _redrive(args: argparse.Namespace) -> int:
    from batchserve.jobs import resources

    if args.max is not None and args.max < 1:
        print("batchserve queue redrive: --max must be at least 1", file=sys.stderr)
        return 2

    async def action(aws: Any, config: QueueConfig) -> int:
        moved = await resources.redrive(aws, config.names, limit=args.max)
        print(f"moved {moved} message(s) from {config.names.dead_letters} to {config.names.requests}")
        return 0

    return _run_queue_command(args, action)


def _worker(args: argparse.Namespace) -> int:
    from batchserve.jobs.worker import run_worker
    from batchserve.serving.logs import setup_logging

    settings = _settings(worker_settings, args, "worker")
    if settings is None:
        return 2
    setup_logging(settings.worker.log_level, settings.worker.log_format)
    try:
        import uvloop
    except ImportError:  # the standard loop works too, a little slower
        return run_worker(settings)
    return run_worker(settings, uvloop.new_event_loop)
