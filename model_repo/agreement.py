"""How closely a quantized model answers like its float original, on the same inputs.

There are no ground-truth labels for the evaluation photos, and none are needed: the question a
quantized variant must answer is whether it says what the float model says. Three numbers:

- top-1 agreement overall: the two models' best classes are the same;
- top-1 agreement where the float model is confident (its best class has probability >= 0.3):
  on pictures the float model itself hesitates over, two near-equal classes swap places on the
  smallest perturbation, so the overall figure mixes real damage with coin flips; this one is
  the figure a user of confident answers sees;
- top-5 containment: the float model's best class is among the quantized model's five best
  (the answer is still on the list the API returns by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENT_PROBABILITY = 0.3
TOP_K = 5


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable for any logit range)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True, slots=True)
class Agreement:
    samples: int
    top1: float
    """Fraction of samples whose best classes are equal."""
    confident_samples: int
    confident_top1: float | None
    """Top-1 agreement over the samples where the reference's best probability >= the threshold;
    None when there are no such samples."""
    top5: float
    """Fraction of samples whose reference best class is in the candidate's top 5."""
    top1_matches: int
    confident_matches: int
    top5_matches: int

    def rows(self) -> list[tuple[str, str]]:
        """(measure, value) pairs for a printed table."""
        confident = (
            "n/a (no sample)"
            if self.confident_top1 is None
            else f"{self.confident_top1:6.1%}  ({self.confident_matches}/{self.confident_samples})"
        )
        return [
            ("top-1 agreement, all samples", f"{self.top1:6.1%}  ({self.top1_matches}/{self.samples})"),
            (f"top-1 agreement, fp32 p >= {CONFIDENT_PROBABILITY:g}", confident),
            (f"fp32 top-1 within top-{TOP_K}", f"{self.top5:6.1%}  ({self.top5_matches}/{self.samples})"),
        ]


def agreement(
    reference_logits: np.ndarray,
    candidate_logits: np.ndarray,
    *,
    confident: float = CONFIDENT_PROBABILITY,
    k: int = TOP_K,
) -> Agreement:
    """Compare [N, classes] logits of the float model (reference) and the quantized one (candidate)."""
    ref = np.asarray(reference_logits)
    cand = np.asarray(candidate_logits)
    if ref.ndim != 2 or ref.shape != cand.shape:
        raise ValueError(f"expected two [N, classes] arrays of one shape, got {ref.shape} and {cand.shape}")
    n, classes = ref.shape
    if n == 0:
        raise ValueError("no samples to compare")
    if not 1 <= k <= classes:
        raise ValueError(f"k must be between 1 and the number of classes ({classes}), not {k}")
    ref_best = ref.argmax(axis=1)
    same = ref_best == cand.argmax(axis=1)
    # Top-k by partition: the order inside the k best does not matter for containment.
    cand_topk = np.argpartition(-cand, k - 1, axis=1)[:, :k]
    in_topk = (cand_topk == ref_best[:, None]).any(axis=1)
    sure = softmax_rows(ref).max(axis=1) >= confident
    n_sure = int(sure.sum())
    return Agreement(
        samples=n,
        top1=float(same.mean()),
        confident_samples=n_sure,
        confident_top1=float(same[sure].mean()) if n_sure else None,
        top5=float(in_topk.mean()),
        top1_matches=int(same.sum()),
        confident_matches=int(same[sure].sum()),
        top5_matches=int(in_topk.sum()),
    )


def format_table(result: Agreement, title: str) -> str:
    width = max(len(m) for m, _ in result.rows())
    lines = [title] + [f"  {measure:<{width}}  {value}" for measure, value in result.rows()]
    return "\n".join(lines)
