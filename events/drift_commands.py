"""``batchserve drift save-reference``: a model's answers over a time range, counted from the event
store into the reference file ``batchserve serve --drift-reference FILE`` compares against.

``register(subparsers)`` adds the command; it exits 0 when the file is written, 1 when the store
cannot answer or holds too few answers, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from pathlib import Path
from typing import TextIO

import msgspec

from batchserve.events.config import EventsConfig
from batchserve.events.drift_reference import DriftReference, save_reference
from batchserve.events.drift_source import NoAnswers, ReferencePeriod, reference_from_store
from batchserve.events.errors import EventsError
from batchserve.events.store import open_store
from batchserve.events.store_options import add_store_arguments, resolve_config

__all__ = ["register", "run_save_reference"]

PROG = "batchserve drift save-reference"


def register(subparsers: argparse._SubParsersAction) -> None:
    drift = subparsers.add_parser("drift", help="model drift monitoring: reference files",
                                  description="Model drift monitoring (see docs/drift.md).")
    commands = drift.add_subparsers(dest="drift_command", metavar="COMMAND", required=True)
    save = commands.add_parser(
        "save-reference",
        help="count a model's answers in the event store into a drift reference file",
        description="Count one model's successful answers between --from and --to in the event store (class mix, "
                    "top-1 confidence, image sizes) into a JSON file for `batchserve serve --drift-reference FILE`.",
    )
    save.add_argument("--from", dest="start", type=_iso_datetime, required=True, metavar="TIME",
                      help="ISO 8601, inclusive (naive times are UTC)")
    save.add_argument("--to", dest="end", type=_iso_datetime, required=True, metavar="TIME",
                      help="ISO 8601, exclusive")
    save.add_argument("--model", required=True, help="the model whose answers make the reference")
    save.add_argument("--out", type=Path, required=True, metavar="FILE", help="the reference file to write")
    save.add_argument("--confidence-threshold", type=float, default=0.5, metavar="P",
                      help="top-1 score under which an answer counts as low-confidence (default: 0.5)")
    save.add_argument("--min-answers", type=int, default=100, metavar="N",
                      help="refuse a period with fewer answers: a small reference makes PSI noisy (default: 100)")
    add_store_arguments(save.add_mutually_exclusive_group())
    save.set_defaults(func=run_save_reference)


def _iso_datetime(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date/time: {text!r}") from None


def run_save_reference(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        period = ReferencePeriod(args.model, args.start, args.end, args.confidence_threshold)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if args.min_answers < 1:
        print(f"{PROG}: error: --min-answers must be at least 1, not {args.min_answers}", file=sys.stderr)
        return 2
    try:
        reference = asyncio.run(_count(resolve_config(args), period, args.min_answers))
        save_reference(reference, args.out)
    except (EventsError, NoAnswers) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    top = sorted(reference.classes.items(), key=lambda item: -item[1])[:5]
    print(f"wrote {args.out}: {reference.answers} answers of {reference.model}, {len(reference.classes)} classes "
          f"(most frequent: {', '.join(f'{c} x{n}' for c, n in top)}), mean confidence "
          f"{reference.mean_confidence:.3f}", file=out)
    return 0


async def _count(config: EventsConfig, period: ReferencePeriod, min_answers: int) -> DriftReference:
    store = open_store(config)
    try:
        await store.open(migrate=False)
        reference = await reference_from_store(store, period, min_answers=min_answers)
        return msgspec.structs.replace(reference, source=f"{store.describe()}, {reference.source}")
    finally:
        await store.close()
