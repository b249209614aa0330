"""EfficientNet-Lite0 built from the shipped weights: it classifies real photos, and it matches an
independent float64 numpy implementation of the unfused network."""

from __future__ import annotations

import itertools
import math
import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from batchserve.loadtest.samples import SAMPLE_IMAGES as IMAGES
from batchserve.model_repo.build import build_model
from batchserve.model_repo.efficientnet import StateDictError, block_specs, fold_efficientnet_lite0, same_padding
from batchserve.model_repo.weights import efficientnet_lite0_weights_path, load_legacy_torch_state_dict

MANIFEST = tomllib.loads((IMAGES / "manifest.toml").read_text(encoding="utf-8"))


def preprocess(path: Path) -> np.ndarray:
    """RGB, short side to 256 (bilinear), centre crop 224, (x - 127) / 128, NCHW float32 [1,3,224,224]."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = 256 / min(w, h)
        img = img.resize((max(256, round(w * scale)), max(256, round(h * scale))), Image.Resampling.BILINEAR)
        w, h = img.size
        left, top = (w - 224) // 2, (h - 224) // 2
        pixels = np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    return ((pixels - 127.0) / 128.0).transpose(2, 0, 1)[np.newaxis].copy()


@pytest.fixture(scope="session")
def lite0_state() -> dict[str, np.ndarray]:
    return load_legacy_torch_state_dict(efficientnet_lite0_weights_path())


@pytest.fixture(scope="session")
def lite0_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model("efficientnet_lite0", tmp_path_factory.mktemp("repo"), progress=lambda _: None)


@pytest.fixture(scope="session")
def lite0_session(lite0_model_path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(lite0_model_path), providers=["CPUExecutionProvider"])


def run(session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    return session.run(["logits"], {"input": batch})[0]


# --- the architecture's arithmetic ---


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [
        (224, 3, 2, (0, 1)),
        (112, 3, 1, (1, 1)),
        (112, 3, 2, (0, 1)),
        (56, 5, 2, (1, 2)),
        (14, 5, 1, (2, 2)),
        (7, 1, 1, (0, 0)),
    ],
)
def test_tf_same_padding(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> None:
    assert same_padding(size, kernel, stride) == pads
    before, after = pads
    assert (size + before + after - kernel) // stride + 1 == math.ceil(size / stride)


def test_block_layout() -> None:
    blocks = block_specs()
    assert len(blocks) == 16
    assert [b.out_channels for b in blocks][-1] == 320
    assert sum(b.stride == 2 for b in blocks) == 4  # with the stem: 224 / 2**5 = 7
    assert sum(b.has_residual for b in blocks) == 9
    for prev, b in itertools.pairwise(blocks):
        assert b.in_channels == prev.out_channels


def test_graph_interface_and_no_batchnorm(lite0_model_path: Path) -> None:
    model = onnx.load(str(lite0_model_path))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input" and out.name == "logits"
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert in_dims == ["batch", 3, 224, 224] and out_dims == ["batch", 1000]
    ops = {n.op_type for n in model.graph.node}
    assert ops == {"Conv", "Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm"}


def test_missing_or_misshapen_parameter_is_a_typed_error(lite0_state: dict[str, np.ndarray]) -> None:
    partial = {k: v for k, v in lite0_state.items() if k != "_blocks.7._bn1.running_var"}
    with pytest.raises(StateDictError, match=r"_blocks\.7\._bn1\.running_var"):
        fold_efficientnet_lite0(partial)
    wrong = dict(lite0_state, **{"_fc.weight": np.zeros((10, 1280), np.float32)})
    with pytest.raises(StateDictError, match=r"_fc\.weight.*\(1000, 1280\)"):
        fold_efficientnet_lite0(wrong)


# --- it classifies real photos ---


@pytest.mark.parametrize("filename", sorted(MANIFEST))
def test_classifies_test_photos(lite0_session: ort.InferenceSession, filename: str) -> None:
    logits = run(lite0_session, preprocess(IMAGES / filename))[0]
    ranked = np.argsort(-logits)
    expected = MANIFEST[filename]
    if "top1_any_of" in expected:
        assert int(ranked[0]) in expected["top1_any_of"], f"{filename}: top-5 {ranked[:5].tolist()}"
    if "top2_any_of" in expected:
        assert set(ranked[:2].tolist()) & set(expected["top2_any_of"]), f"{filename}: top-5 {ranked[:5].tolist()}"


def test_batch_rows_equal_single_runs(lite0_session: ort.InferenceSession) -> None:
    singles = [preprocess(IMAGES / f) for f in sorted(MANIFEST)]
    batched = run(lite0_session, np.concatenate(singles))
    assert batched.shape == (len(singles), 1000) and batched.dtype == np.float32
    for row, single in zip(batched, singles, strict=True):
        np.testing.assert_allclose(row, run(lite0_session, single)[0], rtol=0, atol=1e-4)


# --- an independent float64 reference: BatchNorm not folded, convolutions by hand ---


def _ref_pad(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    # TF "same": total = max((ceil(n/s) - 1) * s + k - n, 0), the odd pixel at the bottom/right.
    n = x.shape[1]
    total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
    lo = total // 2
    return np.pad(x, ((0, 0), (lo, total - lo), (lo, total - lo)))


def _ref_conv(x: np.ndarray, w: np.ndarray, stride: int = 1, depthwise: bool = False) -> np.ndarray:
    """x [C,H,W], w [O,I,k,k] -> [O,H',W'] via sliding windows (im2col without the copy)."""
    k = w.shape[-1]
    if k == 1 and stride == 1:
        return np.tensordot(w[:, :, 0, 0], x, axes=(1, 0))
    windows = np.lib.stride_tricks.sliding_window_view(_ref_pad(x, k, stride), (k, k), axis=(1, 2))[
        :, ::stride, ::stride
    ]
    if depthwise:
        return np.einsum("chwij,cij->chw", windows, w[:, 0], optimize=True)
    return np.einsum("chwij,ocij->ohw", windows, w, optimize=True)


def _ref_bn(x: np.ndarray, state: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    p = {
        n: state[f"{prefix}.{n}"].astype(np.float64)[:, None, None]
        for n in ("weight", "bias", "running_mean", "running_var")
    }
    return (x - p["running_mean"]) / np.sqrt(p["running_var"] + 1e-3) * p["weight"] + p["bias"]


def _relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def reference_logits(image: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
    s = {k: v.astype(np.float64) for k, v in state.items() if v.dtype == np.float32}
    x = _relu6(_ref_bn(_ref_conv(image.astype(np.float64), s["_conv_stem.weight"], 2), s, "_bn0"))
    for b in block_specs():
        p = f"_blocks.{b.index}"
        y = x
        if f"{p}._expand_conv.weight" in s:
            y = _relu6(_ref_bn(_ref_conv(y, s[f"{p}._expand_conv.weight"]), s, f"{p}._bn0"))
        y = _relu6(_ref_bn(_ref_conv(y, s[f"{p}._depthwise_conv.weight"], b.stride, depthwise=True), s, f"{p}._bn1"))
        y = _ref_bn(_ref_conv(y, s[f"{p}._project_conv.weight"]), s, f"{p}._bn2")
        x = y + x if y.shape == x.shape and b.stride == 1 else y
    x = _relu6(_ref_bn(_ref_conv(x, s["_conv_head.weight"]), s, "_bn1"))
    return s["_fc.weight"] @ x.mean(axis=(1, 2)) + s["_fc.bias"]


def test_matches_unfused_float64_reference(
    lite0_session: ort.InferenceSession, lite0_state: dict[str, np.ndarray]
) -> None:
    image = preprocess(IMAGES / "chelsea.jpg")
    expected = reference_logits(image[0], lite0_state)
    actual = run(lite0_session, image)[0].astype(np.float64)
    rel = np.abs(actual - expected).max() / np.abs(expected).max()
    assert rel <= 1e-4, f"max |diff| / max |ref| = {rel:.2e}"
    assert int(np.argmax(expected)) in MANIFEST["chelsea.jpg"]["top1_any_of"]
