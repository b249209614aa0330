"""`batchserve models build|list|push`: the repository on disk, and uploads of it (no server involved)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from batchserve.model_repo.errors import ModelLoadError, ModelRepoError
from batchserve.model_repo.location import ObjectStoreLocation, parse_object_store_url
from batchserve.model_repo.repository import DEFAULT_REPOSITORY, scan_repository

# The same variable `batchserve serve --model-repo-endpoint-url` reads.
ENDPOINT_ENV = "BATCHSERVE_MODEL_REPO_ENDPOINT_URL"


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


def _push(args: argparse.Namespace) -> int:
    from batchserve.model_repo.push import push_model  # boto3 and ONNX Runtime load only when a push runs

    endpoint = args.endpoint_url or os.environ.get(ENDPOINT_ENV) or None
    try:
        report = push_model(args.model_repo, args.name, args.to, versions=args.version, endpoint_url=endpoint)
    except ModelRepoError as exc:
        print(f"batchserve models push: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 0


def _object_store_url(raw: str) -> ObjectStoreLocation:
    try:
        return parse_object_store_url(raw)
    except ValueError as exc:  # argparse prints this message (a plain ValueError would lose it) and exits 2
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    push = models_sub.add_parser("push", help="check a built model and upload it to an s3:// or gs:// repository")
    push.add_argument("name", help="model to upload")
    push.add_argument("--to", required=True, type=_object_store_url, metavar="URL",
                      help="target repository: s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
    push.add_argument("--version", type=int, action="append", metavar="N",
                      help="version to upload (repeatable; default: every built version)")
    push.add_argument("--model-repo", type=Path, default=DEFAULT_REPOSITORY, help="local repository directory")
    push.add_argument("--endpoint-url", default=None,
                      help="object store endpoint (default: AWS's for s3://, Cloud Storage's for gs://) "
                           f"[env {ENDPOINT_ENV}]")
    push.set_defaults(func=_push)
