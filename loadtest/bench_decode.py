"""Decode + preprocess cost per image, with and without JPEG draft mode.

    python loadtest/bench_decode.py [--rounds 20] [--seconds 30] [--big 4000x3000]

Two synthetic photos are generated in memory: a camera-sized JPEG (--big) and a ~35 KB
451 x 300 JPEG, the size of a typical web image. Each round times every case once, in an order
that rotates between rounds, so a CPU whose clock changes mid-run affects all cases alike.
Prints one line per case: encoded bytes, then median / p90 / mean / min milliseconds.
"""

from __future__ import annotations

import argparse
import functools
import io
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from batchserve.model_repo.preprocess import PreprocessConfig, prepare_image

SMALL_SIZE = (451, 300)
SMALL_TARGET_BYTES = 35_000


def synthetic_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradients, a texture and mild noise: compresses like a photo, unlike flat colour or pure noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    texture = np.sin(x * 40.0 + np.cos(y * 25.0) * 3.0) * np.cos(y * 33.0)
    base = np.empty((height, width, 3), dtype=np.float32)
    base[..., 0] = 200.0 * x + 30.0 * texture
    base[..., 1] = 180.0 * y + 40.0 * texture
    base[..., 2] = 120.0 + 90.0 * texture
    base += rng.normal(0.0, 5.0, size=base.shape).astype(np.float32)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def jpeg_near(img: Image.Image, target_bytes: int) -> bytes:
    """The JPEG quality whose output size is closest to target_bytes (binary search)."""
    lo, hi, best = 5, 95, jpeg(img, 50)
    while lo <= hi:
        mid = (lo + hi) // 2
        data = jpeg(img, mid)
        if abs(len(data) - target_bytes) < abs(len(best) - target_bytes):
            best = data
        if len(data) < target_bytes:
            lo = mid + 1
        else:
            hi = mid - 1
    return best


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, not {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError("width and height must be positive")
    return w, h


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (each times every case once)")
    parser.add_argument("--seconds", type=float, default=30.0, help="stop after this long even if rounds remain")
    parser.add_argument("--big", type=parse_size, default=(4000, 3000), help="size of the large JPEG")
    args = parser.parse_args(argv)

    big = jpeg(synthetic_photo(*args.big), 90)
    small = jpeg_near(synthetic_photo(*SMALL_SIZE, seed=1), SMALL_TARGET_BYTES)
    draft, full = PreprocessConfig(jpeg_draft=True), PreprocessConfig(jpeg_draft=False)
    cases: dict[str, tuple[bytes, PreprocessConfig]] = {
        "big_draft": (big, draft),
        "big_full": (big, full),
        "small_draft": (small, draft),
        "small_full": (small, full),
    }
    for data, config in cases.values():  # warm caches and lazy imports outside the timings
        prepare_image(data, config)

    timings: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    deadline = time.perf_counter() + args.seconds
    for round_no in range(max(args.rounds, 1)):
        order = names[round_no % len(names):] + names[: round_no % len(names)]
        for name in order:
            data, config = cases[name]
            timings[name].append(_time_ms(functools.partial(prepare_image, data, config)))
        if time.perf_counter() > deadline:
            break

    print(f"# decode+preprocess per image, {len(timings[names[0]])} rounds; big {args.big[0]}x{args.big[1]}, "
          f"small {SMALL_SIZE[0]}x{SMALL_SIZE[1]}")
    print(f"{'case':<12} {'bytes':>9} {'median_ms':>10} {'p90_ms':>8} {'mean_ms':>8} {'min_ms':>8}")
    for name in names:
        ms = sorted(timings[name])
        p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
        print(f"{name:<12} {len(cases[name][0]):>9} {statistics.median(ms):>10.2f} {p90:>8.2f} "
              f"{statistics.fmean(ms):>8.2f} {ms[0]:>8.2f}")
    return 0


def _time_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


if __name__ == "__main__":
    sys.exit(main())
