"""`batchserve classify`: classify many images against a running server (see docs/bulk-client.md).

Exit status: 0 every image classified, 1 an image failed or the run stopped (server unreachable, key
refused, unknown model), 2 bad arguments (nothing to classify, a missing path, an unknown --out
extension, s3:// without --jobs, a bad URL), 130 interrupted. aiohttp loads only when the command
runs, so building the CLI's parser stays cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import urllib.parse
from collections.abc import Callable
from typing import TextIO

from batchserve.client.http import API_KEY_ENV, resolve_api_key
from batchserve.client.inputs import IMAGE_TYPES, BadInput, Inputs, collect_inputs
from batchserve.client.output import BadOutput, ResultWriter, open_output
from batchserve.client.progress import Progress

__all__ = ["register", "run_classify"]

PROG = "batchserve classify"


def _bounded(kind: Callable[[str], float], low: float, name: str) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, not {text}")
        return value

    convert.__name__ = name
    return convert


def register(sub: argparse._SubParsersAction) -> None:
    extensions = " ".join(sorted(IMAGE_TYPES))
    parser = sub.add_parser(
        "classify", help="classify many images against a running server (files, folders, globs, s3:// with --jobs)",
        description="Sends every image to a running server and writes one result per image as it arrives. "
                    f"Folders are walked recursively; images are recognised by extension ({extensions}), other "
                    "files are skipped. Exit status: 0 all classified, 1 some failed or the run stopped, 2 bad "
                    "arguments.")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files, folders, globs (quoted globs are expanded here, ** included); with "
                             "--jobs also s3://BUCKET/KEY and s3://BUCKET/PREFIX/")
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--concurrency", type=_bounded(int, 1, "concurrency"), default=8, metavar="N",
                        help="requests in flight at once, over as many keep-alive connections (default 8)")
    parser.add_argument("--out", default=None, metavar="FILE.jsonl|FILE.csv",
                        help="write results here, as JSON Lines or CSV by the extension (default: JSON Lines on "
                             "stdout)")
    parser.add_argument("--resume", action="store_true",
                        help="skip the paths --out already holds a success for (failed ones are tried again) and "
                             "append to it")
    parser.add_argument("--model", default=None, metavar="M", help="model to ask (default: the server's default)")
    parser.add_argument("--top-k", type=_bounded(int, 1, "top-k"), default=None, metavar="K",
                        help="predictions per image (default: the server's, 5)")
    parser.add_argument("--api-key", default=None, metavar="KEY", help=f"API key to send [env {API_KEY_ENV}]")
    parser.add_argument("--jobs", action="store_true",
                        help="submit jobs to the queue backend (POST /v1/jobs) and follow them instead of one "
                             "request per image; needed for s3:// inputs")
    parser.add_argument("--max-retries", type=_bounded(int, 0, "max-retries"), default=5, metavar="N",
                        help="tries after the first for 429/502/503/504 answers and connection failures "
                             "(default 5); Retry-After is honoured")
    parser.add_argument("--timeout", type=_bounded(float, 0.001, "timeout"), default=60.0, metavar="S",
                        help="seconds one request may take before it is tried again (default 60)")
    parser.add_argument("--poll-interval", type=_bounded(float, 0.05, "poll-interval"), default=1.0, metavar="S",
                        help="with --jobs: seconds between looks at the jobs' progress (default 1)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr, only the summary")
    parser.set_defaults(func=run_classify)


def check_url(url: str) -> str:
    """The base URL without a trailing slash; raises ValueError when it cannot be a server's address."""
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise ValueError(f"--url {url!r}: the port is not a number from 0 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url {url!r}: expected http://HOST[:PORT] or https://HOST[:PORT]")
    if parts.query or parts.fragment:
        raise ValueError(f"--url {url!r}: give the server's base URL, without a query")
    return url.rstrip("/")


def run_classify(args: argparse.Namespace, err: TextIO | None = None) -> int:
    err = err or sys.stderr

    def fail(message: str, status: int = 2) -> int:
        print(f"{PROG}: error: {message}", file=err)
        return status

    try:
        base_url = check_url(args.url)
        inputs = collect_inputs(args.paths, allow_s3=args.jobs)
    except (ValueError, BadInput) as exc:
        return fail(str(exc))
    for pattern in inputs.empty_globs:
        print(f"{PROG}: warning: no file matches {pattern}", file=err)
    if inputs.empty:
        count = len(inputs.skipped)
        skipped = (f" ({count} file skipped: not an image by its extension)" if count == 1 else
                   f" ({count} files skipped: not images by their extension)" if count else "")
        return fail(f"nothing to classify{skipped}")
    try:
        writer, done = open_output(args.out, resume=args.resume)
    except BadOutput as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"--out {args.out}: {exc.strerror or exc}")
    try:
        return _run(args, base_url, inputs, writer, done, err)
    finally:
        writer.close()


def _run(args: argparse.Namespace, base_url: str, inputs: Inputs, writer: ResultWriter, done: set[str],
         err: TextIO) -> int:
    from batchserve.client.bulk import RunSettings, classify_files
    from batchserve.client.bulk_jobs import run_jobs
    from batchserve.client.retry import RetryPolicy

    files = [path for path in inputs.files if path not in done]
    s3_objects = [obj for obj in inputs.s3_objects if obj.uri not in done]
    already = inputs.count - len(files) - len(s3_objects)
    resumed = f", {already} already done" if args.resume else ""
    settings = RunSettings(base_url=base_url, model=args.model, top_k=args.top_k,
                           api_key=resolve_api_key(args.api_key), concurrency=args.concurrency,
                           timeout_s=args.timeout, policy=RetryPolicy(max_retries=args.max_retries))
    total = None if inputs.s3_prefixes else len(files) + len(s3_objects)
    progress = Progress(err, total, tty=err.isatty(), quiet=args.quiet)
    if not files and not s3_objects and not inputs.s3_prefixes:
        progress.finish(len(inputs.skipped), resumed)
        return 0
    try:
        if args.jobs:
            outcome = asyncio.run(run_jobs(files, s3_objects, inputs.s3_prefixes, settings, writer, progress,
                                           poll_s=args.poll_interval))
        else:
            outcome = asyncio.run(classify_files(files, settings, writer, progress))
    except KeyboardInterrupt:
        progress.finish(len(inputs.skipped), f"{resumed}; interrupted (--resume picks up from --out)")
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, and let the exit's flush go nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # the only OSError left to reach here: writing --out failed (disk full, ...)
        progress.message(f"{PROG}: error: cannot write the results: {exc.strerror or exc}")
        return 1
    retries = f", {outcome.retries} retries" if outcome.retries else ""
    for note in outcome.notes:
        progress.message(f"{PROG}: {note}")
    if outcome.stopped:
        progress.message(f"{PROG}: error: {outcome.stopped}")
        progress.finish(len(inputs.skipped), f"{resumed}{retries}; stopped early")
        return 1
    progress.finish(len(inputs.skipped), f"{resumed}{retries}")
    return 0 if outcome.success else 1
