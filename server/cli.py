"""`batchserve serve`: one flag per configuration field and per model knob (see server/options.py)."""

from __future__ import annotations

import argparse
import sys

from batchserve.server.options import OPTIONS, from_sources
from batchserve.serving.options import add_flags


def _serve(args: argparse.Namespace) -> int:
    from batchserve.server.lifecycle import serve
    from batchserve.serving.logs import setup_logging

    try:
        config = from_sources({option.name: getattr(args, option.name, None) for option in OPTIONS})
    except ValueError as exc:
        print(f"batchserve serve: {exc}", file=sys.stderr)
        return 2
    # uvicorn's access logger logs every request at INFO: only --access-log lets it through.
    setup_logging(config.logging.log_level, config.logging.log_format,
                  quiet=() if config.logging.access_log else ("uvicorn.access",))
    return serve(config)


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the HTTP server")
    add_flags(serve, OPTIONS)
    serve.set_defaults(func=_serve)
