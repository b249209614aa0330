"""`batchserve models load|unload NAME --url URL`: model control of a running server.

A thin client of the repository extension's routes, over HTTP only. It needs a key with the admin
scope: `--api-key` (env BATCHSERVE_API_KEY), or `--admin-key` (env BATCHSERVE_ADMIN_KEY), the
server's bootstrap key, under the name model control has always used.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from collections.abc import Mapping

from batchserve.client.http import API_KEY_ENV, HttpError, Unreachable, api_key_headers, request_json

ADMIN_KEY_ENV = "BATCHSERVE_ADMIN_KEY"
# Loading builds an inference session and warms it up: on a GPU with TensorRT that takes minutes.
TIMEOUT_S = 600.0


def control_url(base: str, name: str, action: str) -> str:
    return f"{base.rstrip('/')}/v2/repository/models/{urllib.parse.quote(name, safe='')}/{action}"


def request_action(base_url: str, name: str, action: str, api_key: str | None, timeout: float = TIMEOUT_S) -> dict:
    """POST the action; returns the server's JSON answer or raises RuntimeError with its message."""
    try:
        answer = request_json(control_url(base_url, name, action), method="POST", body={},
                              headers=api_key_headers(api_key), timeout=timeout)
    except Unreachable as exc:
        raise RuntimeError(f"cannot reach {base_url}: {exc.message}") from None
    except HttpError as exc:
        raise RuntimeError(f"{action} {name!r} failed: HTTP {exc.status}: {exc.message}") from None
    return answer if isinstance(answer, dict) else {}


def choose_key(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> str | None:
    """Flags before variables; of each, --api-key before the --admin-key alias."""
    return (args.api_key or args.admin_key or environ.get(API_KEY_ENV) or environ.get(ADMIN_KEY_ENV)) or None


def _run(args: argparse.Namespace) -> int:
    key = choose_key(args)
    try:
        answer = request_action(args.url, args.name, args.models_command, key)
    except RuntimeError as exc:
        print(f"batchserve models {args.models_command}: {exc}", file=sys.stderr)
        return 1
    versions = ", ".join(answer.get("versions", [])) or "-"
    print(f"{args.name}: {answer.get('state', 'done')} (versions: {versions})")
    return 0


def register(models_sub: argparse._SubParsersAction) -> None:
    for action, help_text in (("load", "load or reload a model on a running server (--model-control explicit)"),
                              ("unload", "unload a model from a running server (--model-control explicit)")):
        parser = models_sub.add_parser(action, help=help_text)
        parser.add_argument("name", help="model name")
        parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
        parser.add_argument("--api-key", default=None, help=f"an API key with the admin scope [env {API_KEY_ENV}]")
        parser.add_argument("--admin-key", default=None,
                            help=f"the server's --admin-key (the same as --api-key) [env {ADMIN_KEY_ENV}]")
        parser.set_defaults(func=_run)
