"""`batchserve` command line. `serve`'s flags are generated from ServerConfig, one per field."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args, get_origin

from server.config import ServerConfig, env_name, field_types, from_sources, parse_value


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
    from server.lifecycle import serve
    from server.logs import setup_logging

    cli_values = {f.name: getattr(args, f.name, None) for f in fields(ServerConfig)}
    try:
        config = from_sources(cli_values)
    except ValueError as exc:
        print(f"batchserve serve: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    return serve(config)


def _models_build(args: argparse.Namespace) -> int:
    from model_repo.build import build_model

    try:
        build_model(args.name, args.model_repo, version=args.version, variant=args.variant, if_missing=args.if_missing)
    except (ValueError, OSError) as exc:
        print(f"batchserve models build: {exc}", file=sys.stderr)
        return 1
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from model_repo.errors import ModelLoadError
    from model_repo.repository import scan_repository

    try:
        specs = scan_repository(args.model_repo)
    except ModelLoadError as exc:
        print(f"batchserve models list: {exc}", file=sys.stderr)
        return 1
    print(f"{'model':<22} {'built versions':<16} {'served (policy)':<18} description")
    for name, spec in specs.items():
        built = spec.built_versions()
        served = spec.servable_versions()
        print(f"{name:<22} {','.join(map(str, built)) or 'not built':<16} "
              f"{','.join(map(str, served)) or '-':<18} {spec.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from model_repo.repository import DEFAULT_REPOSITORY

    parser = argparse.ArgumentParser(prog="batchserve", description="Dynamically batched image classification server.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP server")
    add_server_flags(serve)
    serve.set_defaults(func=_serve)

    models = sub.add_parser("models", help="build and list models in the repository")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    build = models_sub.add_parser("build", help="build a model's ONNX graph from its shipped weights")
    build.add_argument("name", help="model to build (efficientnet_lite0, tiny)")
    build.add_argument("--variant", default="fp32", help="numeric variant of the graph (default fp32)")
    build.add_argument("--version", type=int, default=1, help="version directory to write (default 1)")
    build.add_argument("--if-missing", action="store_true", help="do nothing when that version is built already")
    build.add_argument("--model-repo", type=Path, default=DEFAULT_REPOSITORY, help="repository directory")
    build.set_defaults(func=_models_build)
    listing = models_sub.add_parser("list", help="models on disk and which versions are built")
    listing.add_argument("--model-repo", type=Path, default=DEFAULT_REPOSITORY, help="repository directory")
    listing.set_defaults(func=_models_list)
    from server.model_control import register as register_model_control

    register_model_control(models_sub)

    from events.commands import register as register_events

    register_events(sub)
    for module in ("loadtest.commands", "deploy.cli"):
        __import__(module, fromlist=["register"]).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
