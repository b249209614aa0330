"""`batchserve models build|list`: the repository on disk (no server involved)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from batchserve.model_repo.errors import ModelLoadError
from batchserve.model_repo.repository import DEFAULT_REPOSITORY, scan_repository


def _build(args: argparse.Namespace) -> int:
    from batchserve.model_repo.build import build_model  # onnx loads only when a build runs

    try:
        build_model(args.name, args.model_repo, version=args.version, variant=args.variant, if_missing=args.if_missing)
    except (ValueError, OSError) as exc:
        print(f"batchserve models build: {exc}", file=sys.stderr)
        return 1
    return 0


def _list(args: argparse.Namespace) -> int:
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


def register(models_sub: argparse._SubParsersAction) -> None:
    build = models_sub.add_parser("build", help="build a model's ONNX graph from its shipped weights")
    build.add_argument("name", help="model to build (efficientnet_lite0, tiny)")
    build.add_argument("--variant", default="fp32", help="numeric variant of the graph (default fp32)")
    build.add_argument("--version", type=int, default=1, help="version directory to write (default 1)")
    build.add_argument("--if-missing", action="store_true", help="do nothing when that version is built already")
    build.add_argument("--model-repo", type=Path, default=DEFAULT_REPOSITORY, help="repository directory")
    build.set_defaults(func=_build)
    listing = models_sub.add_parser("list", help="models on disk and which versions are built")
    listing.add_argument("--model-repo", type=Path, default=DEFAULT_REPOSITORY, help="repository directory")
    listing.set_defaults(func=_list)
