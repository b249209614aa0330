"""`batchserve models load|unload NAME --url URL`: model control of a running server.

A thin client of the repository extension's routes, over HTTP only.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse

from batchserve.client.http import HttpError, Unreachable, request_json

ADMIN_KEY_ENV = "BATCHSERVE_ADMIN_KEY"
# Loading builds an inference session and warms it up: on a GPU with TensorRT that takes minutes.
TIMEOUT_S = 600.0


def control_url(base: str, name: str, action: str) -> str:
    return f"{base.rstrip('/')}/v2/repository/models/{urllib.parse.quote(name, safe='')}/{action}"


def request_action(base_url: str, name: str, action: str, admin_key: str | None, timeout: float = TIMEOUT_S) -> dict:
    """POST the action; returns the server's JSON answer or raises RuntimeError with its message."""
    headers = {"X-Admin-Key": admin_key} if admin_key else {}
    try:
        answer = request_json(control_url(base_url, name, action), method="POST", body={}, headers=headers,
                              timeout=timeout)
    except Unreachable as exc:
        raise RuntimeError(f"cannot reach {base_url}: {exc.message}") from None
    except HttpError as exc:
        raise RuntimeError(f"{action} {name!r} failed: HTTP {exc.status}: {exc.message}") from None
    return answer if isinstance(answer, dict) else {}


def _run(args: argparse.Namespace) -> int:
    key = args.admin_key if args.admin_key is not None else os.environ.get(ADMIN_KEY_ENV)
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
        parser.add_argument("--admin-key", default=None, help=f"X-Admin-Key to send [env {ADMIN_KEY_ENV}]")
        parser.set_defaults(func=_run)
