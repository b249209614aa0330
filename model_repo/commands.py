"""`batchserve models build|list|add|push`: the repository on disk, and uploads of it (no server involved)."""

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
    print(f"{'model':<26} {'built versions':<16} {'served (policy)':<18} description")
    for name, spec in specs.items():
        built = spec.built_versions()
        served = spec.servable_versions()
        print(f"{name:<26} {','.join(map(str, built)) or 'not built':<16} "
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


def _add(args: argparse.Namespace) -> int:
    # onnx and ONNX Runtime load only when an add runs
    from batchserve.model_repo.add import AddRequest, add_model
    from batchserve.model_repo.add_plan import AddOptions
    from batchserve.model_repo.add_report import format_report
    from batchserve.model_repo.graph_inspect import ModelAddError

    options = AddOptions(
        crop=args.crop, resize_short_side=args.resize_short_side, mean=args.mean, std=args.std, layout=args.layout,
        channel_order=args.channel_order, output_kind=args.output_kind, max_batch_size=args.max_batch_size,
    )
    request = AddRequest(args.name, args.onnx, args.labels, args.model_repo, options, description=args.description,
                         force=args.force, check=tuple(args.check or ()))
    try:
        report = add_model(request)
    except ModelAddError as exc:
        print(f"batchserve models add: {exc} [{exc.code}]", file=sys.stderr)
        return 2 if exc.code == "invalid_name" else 1  # a malformed argument, as argparse answers
    print(format_report(report, default_repository=args.model_repo == DEFAULT_REPOSITORY))
    return 0


def _normalisation(raw: str) -> float | tuple[float, ...]:
    """--mean/--std: one number, or three separated by commas (0-255 pixel scale)."""
    try:
        values = tuple(float(v) for v in raw.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected V or V,V,V (numbers), not {raw!r}") from None
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected one value or three (one per channel), not {len(values)}")
    return values[0] if len(values) == 1 else values


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


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
    add = models_sub.add_parser(
        "add", help="add your own ONNX image classifier (checks the graph, writes config.toml and version 1)",
        description="Check an ONNX image classifier (one 4-D float32 image input, one [N, classes] output), "
                    "then write <repo>/NAME/config.toml, labels.txt and 1/model.onnx. Flags left out are read "
                    "from the graph where it says (layout, crop, batch size) or take the defaults.",
    )
    add.add_argument("name", help="model name (letters, digits, '_' and '-')")
    add.add_argument("--onnx", required=True, type=Path, metavar="FILE", help="the ONNX graph")
    add.add_argument("--labels", required=True, type=Path, metavar="FILE",
                     help="class names: one per line (line N is class N-1), or a JSON list or {id: name} object")
    add.add_argument("--crop", type=_positive_int, metavar="N",
                     help="side of the square centre crop (default: the graph's input size, else 224)")
    add.add_argument("--resize-short-side", type=_positive_int, metavar="N",
                     help="short side the image is resized to before the crop (default: crop x 256/224)")
    add.add_argument("--mean", type=_normalisation, metavar="V[,V,V]",
                     help="subtracted from each 0-255 channel value, one value or one per channel in the "
                          "model's channel order (default 127)")
    add.add_argument("--std", type=_normalisation, metavar="V[,V,V]",
                     help="divides each channel value after the mean, as --mean (default 128)")
    add.add_argument("--layout", type=str.upper, choices=("NCHW", "NHWC"),
                     help="input axis order (default: read from where the graph's 3 channels are)")
    add.add_argument("--channel-order", type=str.upper, choices=("RGB", "BGR"),
                     help="colour order the model was trained on (default RGB)")
    add.add_argument("--output-kind", choices=("logits", "probabilities"),
                     help="what the output holds (default: probabilities when the graph ends in Softmax or its "
                          "rows sum to 1, else logits)")
    add.add_argument("--max-batch-size", type=_positive_int, metavar="N",
                     help="largest batch served (default 32; a graph with a fixed batch size B: B)")
    add.add_argument("--description", help="one line shown by `models list` and /v1/models")
    add.add_argument("--force", action="store_true", help="replace a model of that name")
    add.add_argument("--check", type=Path, action="append", metavar="IMAGE",
                     help="print the top-5 classes of this image with the new model (repeatable)")
    add.add_argument("--model-repo", type=Path, default=DEFAULT_REPOSITORY, help="repository directory")
    add.set_defaults(func=_add)
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
