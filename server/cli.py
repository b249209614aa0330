"""`batchserve serve`: one flag per configuration field and per model knob (see server/options.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from batchserve.server.options import OPTIONS, Option, from_sources


def _argument(option: Option) -> tuple[str, dict[str, Any]]:
    """argparse settings for one option; its default is None so `from_sources` can tell 'not given'."""
    if option.is_knob:
        default = "config.toml"
    else:
        default = str(option.default) if isinstance(option.default, Path) else repr(option.default)
    kwargs: dict[str, Any] = {"default": None, "dest": option.name,
                              "help": f"{option.help} [env {option.env}; default {default}]"}
    if option.is_switch:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif option.choices is not None:
        kwargs["choices"] = option.choices
        kwargs["type"] = str.lower  # as the environment variable: DEBUG is debug
    else:
        def parse(raw: str) -> Any:
            return option.parse(raw)

        parse.__name__ = option.name  # argparse names it in "invalid <name> value"
        kwargs["type"] = parse
        if option.is_list:
            kwargs["metavar"] = "A,B,..."
    return option.flag, kwargs


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """The flags, grouped in --help by the configuration object each one sets."""
    groups: dict[str, Any] = {}
    for option in OPTIONS:
        title = "model knobs (override every model's config.toml)" if option.is_knob else option.section
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        flag, kwargs = _argument(option)
        groups[title].add_argument(flag, **kwargs)


def _serve(args: argparse.Namespace) -> int:
    from batchserve.server.lifecycle import serve
    from batchserve.server.logs import setup_logging

    try:
        config = from_sources({option.name: getattr(args, option.name, None) for option in OPTIONS})
    except ValueError as exc:
        print(f"batchserve serve: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.logging.log_level, config.logging.log_format)
    return serve(config)


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the HTTP server")
    add_server_flags(serve)
    serve.set_defaults(func=_serve)
