"""`batchserve serve`: its flags are generated from ServerConfig, one per field."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any, get_args, get_origin

from batchserve.server.config import ServerConfig, env_name, field_types, from_sources, parse_value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerConfig field; default None so `from_sources` can tell 'not given'."""
    types = field_types()
    for f in fields(ServerConfig):
        if f.metadata.get("internal"):
            continue
        tp = types[f.name]
        help_text = f"{f.metadata.get('help', '')} [env {env_name(f.name)}; default {f.default!r}]"
        base = [a for a in get_args(tp) if a is not type(None)] or [tp]
        if bool in base:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        kwargs: dict[str, Any] = {"default": None, "help": help_text, "dest": f.name}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        is_tuple = get_origin(tp) is tuple or any(get_origin(a) is tuple for a in base)
        kwargs["type"] = (lambda raw, tp=tp: parse_value(tp, raw))
        if is_tuple:
            kwargs["metavar"] = "A,B,..."
        parser.add_argument(_flag(f.name), **kwargs)


def _serve(args: argparse.Namespace) -> int:
    from batchserve.server.lifecycle import serve
    from batchserve.server.logs import setup_logging

    cli_values = {f.name: getattr(args, f.name, None) for f in fields(ServerConfig)}
    try:
        config = from_sources(cli_values)
    except ValueError as exc:
        print(f"batchserve serve: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    return serve(config)


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the HTTP server")
    add_server_flags(serve)
    serve.set_defaults(func=_serve)
