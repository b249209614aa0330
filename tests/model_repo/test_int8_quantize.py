"""The agreement measures and the int8 recipe's parts, on small arrays and a tiny graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from batchserve.model_repo.agreement import CONFIDENT_PROBABILITY, agreement, format_table, softmax_rows
from batchserve.model_repo.build import BuildError, build_model
from batchserve.model_repo.quantize import (
    PAIR_LIMIT,
    TensorStats,
    clipping_range,
    logits,
    plain_codes,
    quantization_mse,
    quantize_model,
    saturation_safe_codes,
)
from tests.model_repo.conftest import build_conv_classifier

# --- agreement ---


def confident_row(best: int, classes: int = 8) -> np.ndarray:
    row = np.zeros(classes)
    row[best] = 5.0  # softmax ~0.95
    return row


def unsure_row(order: list[int], classes: int = 8) -> np.ndarray:
    row = np.zeros(classes)
    for rank, c in enumerate(order):
        row[c] = 0.1 * (len(order) - rank)  # best probability well under 0.3
    return row


def test_agreement_counts_top1_confident_top1_and_top5() -> None:
    ref = np.stack([confident_row(1), confident_row(2), unsure_row([3, 4, 5]), unsure_row([6, 7])])
    cand = np.stack(
        [
            confident_row(1),  # agrees
            unsure_row([0, 4, 5, 6, 7, 2]),  # disagrees; fp32's class 2 is 6th: outside the top 5
            unsure_row([4, 3]),  # disagrees; fp32's class 3 is second
            unsure_row([6, 7]),  # agrees
        ]
    )
    result = agreement(ref, cand)
    assert (result.samples, result.top1_matches, result.top1) == (4, 2, 0.5)
    assert (result.confident_samples, result.confident_matches, result.confident_top1) == (2, 1, 0.5)
    assert (result.top5_matches, result.top5) == (3, 0.75)
    table = format_table(result, "title")
    assert table.splitlines()[0] == "title" and "50.0%  (2/4)" in table and "75.0%  (3/4)" in table
    assert f"fp32 p >= {CONFIDENT_PROBABILITY:g}" in table


def test_agreement_without_confident_samples_and_identical_inputs() -> None:
    ref = np.stack([unsure_row([0, 1]), unsure_row([2, 3])])
    result = agreement(ref, ref)
    assert result.top1 == result.top5 == 1.0
    assert result.confident_samples == 0 and result.confident_top1 is None
    assert "n/a" in format_table(result, "t")
    assert agreement(ref, ref, k=1).top5 == 1.0


@pytest.mark.parametrize(
    ("ref", "cand", "kwargs", "match"),
    [
        (np.zeros((2, 4)), np.zeros((2, 5)), {}, "one shape"),
        (np.zeros(4), np.zeros(4), {}, "one shape"),
        (np.zeros((0, 4)), np.zeros((0, 4)), {}, "no samples"),
        (np.zeros((2, 4)), np.zeros((2, 4)), {"k": 5}, "between 1"),
    ],
)
def test_agreement_rejects_bad_input(ref: np.ndarray, cand: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        agreement(ref, cand, **kwargs)


def test_softmax_rows_is_stable() -> None:
    p = softmax_rows(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    assert np.allclose(p.sum(axis=1), 1.0) and p[0, 0] == pytest.approx(1.0) and p[1, 0] == pytest.approx(0.5)


# --- the recipe's parts ---


def test_saturation_safe_codes_never_let_a_pair_overflow_16_bits() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 48, 1, 1)).astype(np.float32)
    weight[0, :2] = 3.0  # a same-sign pair at the channel's maximum
    codes, scale = saturation_safe_codes(weight)
    assert codes.shape == weight.shape and scale.shape == (64,)
    assert np.abs(codes).max() <= 127
    pairs = codes.reshape(64, 24, 2)
    for sign in (1, -1):
        assert (np.maximum(sign * pairs, 0).sum(axis=2) <= PAIR_LIMIT).all()
    # 255 x the worst pair sum still fits a signed 16-bit lane.
    assert 255 * PAIR_LIMIT <= 32767
    plain_codes_, plain_scale = plain_codes(weight)
    assert (scale >= plain_scale * (1 - 1e-6)).all()
    assert scale[0] > plain_scale[0]  # the channel with the big pair gave up some precision
    error = np.abs(codes * scale[:, None, None, None] - weight).max(axis=(1, 2, 3))
    assert (error <= scale * 1.5).all()  # still within about a step of the float weights
    assert np.abs(plain_codes_).max() == 127


def test_clipping_range_ignores_a_lone_outlier() -> None:
    values = np.concatenate([np.random.default_rng(1).uniform(0, 1, 10_000), [40.0]]).astype(np.float32)
    stats = TensorStats(lowest=0.0, highest=40.0, chunks=[values])
    lo, hi = clipping_range(stats)
    assert lo == 0.0 and 1.0 <= hi < 40.0
    assert quantization_mse(values, lo, hi) < quantization_mse(values, 0.0, 40.0)
    assert quantization_mse(np.zeros(3), 0.0, 0.0) == 0.0


def test_quantize_model_gives_a_qdq_graph_close_to_the_float_one(tmp_path: Path) -> None:
    path = build_conv_classifier(tmp_path / "m.onnx", classes=10)
    model = onnx.load(str(path))
    rng = np.random.default_rng(2)
    calibration = rng.uniform(-1, 1, (8, 3, 224, 224)).astype(np.float32)
    quantized, raised = quantize_model(model, calibration)
    ops = {n.op_type for n in quantized.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and 0.0 <= raised <= 1.0
    onnx.checker.check_model(quantized, full_check=True)
    test = rng.uniform(-1, 1, (4, 3, 224, 224)).astype(np.float32)
    ref, out = logits(model, test), logits(quantized, test)
    assert out.shape == ref.shape == (4, 10)
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


def test_config_variant_is_checked(tmp_path: Path) -> None:
    model_dir = tmp_path / "odd"
    model_dir.mkdir()
    (model_dir / "config.toml").write_text('builder = "tiny"\nvariant = "int4"\n')
    with pytest.raises(BuildError, match="unknown variant 'int4'.*int8"):
        build_model("odd", tmp_path, progress=lambda _: None)
    (model_dir / "config.toml").write_text('builder = "tiny"\nvariant = "int8"\n')
    with pytest.raises(BuildError, match="int8 variant of tiny.*--variant fp16"):
        build_model("odd", tmp_path, variant="fp16", progress=lambda _: None)
    assert not (model_dir / "1").exists()


def test_a_missing_photo_package_is_a_build_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchserve.model_repo import calibration_photos as cp

    ghost = cp.Photo("ghost", "no_such_package_here", "data/ghost.png", cp.CALIBRATION, "none")
    monkeypatch.setattr(cp, "PHOTOS", (ghost, *cp.PHOTOS))
    model_dir = tmp_path / "tiny_int8"
    model_dir.mkdir()
    (model_dir / "config.toml").write_text('builder = "tiny"\nvariant = "int8"\n')
    with pytest.raises(BuildError, match="int8 variant tiny_int8.*no_such_package_here, which is not installed"):
        build_model("tiny_int8", tmp_path, progress=lambda _: None)
    assert not (model_dir / "1" / "model.onnx").exists()


def test_an_int8_variant_builds_from_its_builder_and_prints_the_agreement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchserve.model_repo import calibration_photos as cp

    by_name = {p.name: p for p in cp.PHOTOS}
    monkeypatch.setattr(cp, "PHOTOS", tuple(by_name[n] for n in ("coffee", "flower", "chelsea", "china")))
    model_dir = tmp_path / "tiny_int8"
    model_dir.mkdir()
    (model_dir / "config.toml").write_text('builder = "tiny"\nvariant = "int8"\n')
    messages: list[str] = []
    path = build_model("tiny_int8", tmp_path, progress=messages.append)
    text = "\n".join(messages)
    assert "(tiny random-weight classifier for tests, int8)" in text
    assert "2 photos x 16 for calibration, 2 others x 16 for evaluation" in text
    assert "int8 vs fp32 on the evaluation photos" in text and "(none used for calibration)" in text
    assert "top-1 agreement, all samples" in text and "/32)" in text
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
