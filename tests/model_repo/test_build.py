"""build_model: files land where the repository layout says, atomically, with labels; the committed
model directories are consistent with what the builders produce."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from PIL import Image

import batchserve.model_repo.build as build_mod
from batchserve.loadtest.samples import SAMPLE_PHOTO as CHELSEA
from batchserve.model_repo.build import BUILDERS, BuildError, build_model, list_builders
from batchserve.model_repo.labels import LabelsError, format_labels, load_imagenet_labels, read_labels
from batchserve.model_repo.synthetic import build_tiny

SHIPPED_MODELS = Path(build_mod.__file__).resolve().parent / "models"


def quiet(_: str) -> None:
    pass


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_tiny_builds_into_the_repository_layout(tmp_path: Path) -> None:
    messages: list[str] = []
    path = build_model("tiny", tmp_path, progress=messages.append)
    assert path == tmp_path / "tiny" / "1" / "model.onnx" and path.is_file()
    assert read_labels(tmp_path / "tiny" / "labels.txt") == load_imagenet_labels()
    assert any("built" in m for m in messages)
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no temp file left behind


@pytest.mark.parametrize("n", [1, 3])
def test_tiny_model_gives_spread_logits_per_sample(tmp_path: Path, n: int) -> None:
    sess = session(build_model("tiny", tmp_path, progress=quiet))
    x = np.random.default_rng(n).normal(0.0, 1.0, size=(n, 3, 224, 224)).astype(np.float32)
    (logits,) = sess.run(["logits"], {"input": x})
    assert logits.shape == (n, 1000) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    assert np.ptp(logits, axis=1).min() > 1.0  # far from all-equal, so top-k order means something
    if n > 1:
        assert not np.allclose(logits[0], logits[1])  # the output depends on the input


def test_tiny_is_deterministic_per_seed() -> None:
    assert build_tiny(0).SerializeToString() == build_tiny(0).SerializeToString()
    assert build_tiny(0).SerializeToString() != build_tiny(1).SerializeToString()


def test_if_missing_keeps_an_existing_file(tmp_path: Path) -> None:
    path = build_model("tiny", tmp_path, progress=quiet)
    path.write_bytes(b"sentinel")
    messages: list[str] = []
    assert build_model("tiny", tmp_path, if_missing=True, progress=messages.append) == path
    assert path.read_bytes() == b"sentinel"
    assert any("already built" in m for m in messages)
    build_model("tiny", tmp_path, progress=quiet)  # without if_missing it rebuilds
    onnx.checker.check_model(onnx.load(str(path)))


def test_version_directories_and_existing_labels(tmp_path: Path) -> None:
    labels = tmp_path / "tiny" / "labels.txt"
    labels.parent.mkdir()
    labels.write_text(format_labels([f"class {i}" for i in range(1000)]), encoding="utf-8")
    path = build_model("tiny", tmp_path, version=3, progress=quiet)
    assert path == tmp_path / "tiny" / "3" / "model.onnx"
    assert read_labels(labels)[0] == "class 0"  # an existing label file is not replaced


def test_unknown_builder_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resnet50") as info:
        build_model("resnet50", tmp_path, progress=quiet)
    assert "efficientnet_lite0" in str(info.value) and "tiny" in str(info.value)
    assert not (tmp_path / "resnet50").exists()
    assert list_builders() == sorted(BUILDERS) == ["efficientnet_lite0", "tiny"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"version": 0}, "version"), ({"version": True}, "version"), ({"variant": "int8"}, "fp32, fp16")],
)
def test_bad_arguments_are_rejected(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model("tiny", tmp_path, progress=quiet, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "..", "../tiny", "a/b"])
def test_model_name_must_stay_inside_the_repository(tmp_path: Path, name: str) -> None:
    repo = tmp_path / "repo"
    with pytest.raises(BuildError, match="single directory name"):
        build_model(name, repo, progress=quiet)
    assert not any(tmp_path.rglob("model.onnx"))


def test_builder_and_labels_file_come_from_config(tmp_path: Path) -> None:
    model_dir = tmp_path / "my-classifier"
    model_dir.mkdir()
    (model_dir / "config.toml").write_text('name = "my-classifier"\nbuilder = "tiny"\nlabels = "names.txt"\n')
    path = build_model("my-classifier", tmp_path, progress=quiet)
    assert path == model_dir / "1" / "model.onnx"
    assert len(read_labels(model_dir / "names.txt")) == 1000
    (model_dir / "config.toml").write_text('builder = "tiny"\nlabels = "../escape.txt"\n')
    with pytest.raises(ValueError, match="labels"):
        build_model("my-classifier", tmp_path, progress=quiet)
    (model_dir / "config.toml").write_text("builder = [")
    with pytest.raises(ValueError, match="cannot read"):
        build_model("my-classifier", tmp_path, progress=quiet)


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(build_mod.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        build_model("tiny", tmp_path, progress=quiet)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no partial config, labels or model


def test_efficientnet_build_reports_each_step(tmp_path: Path) -> None:
    messages: list[str] = []
    build_model("efficientnet_lite0", tmp_path, progress=messages.append)
    text = "\n".join(messages)
    for step in ("reading weights: 296 tensors", "folding BatchNorm", "emitting graph", "onnx.checker", "writing"):
        assert step in text


def test_fp16_variant_keeps_float32_interface_and_predictions(tmp_path: Path) -> None:
    fp32 = build_model("efficientnet_lite0", tmp_path, version=1, progress=quiet)
    fp16 = build_model("efficientnet_lite0", tmp_path, version=2, variant="fp16", progress=quiet)
    assert fp16.stat().st_size < 0.55 * fp32.stat().st_size
    model = onnx.load(str(fp16))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert {t.data_type for t in model.graph.initializer} == {TensorProto.FLOAT16}

    with Image.open(CHELSEA) as img:
        pixels = np.asarray(img.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32)
    x = ((pixels - 127.0) / 128.0).transpose(2, 0, 1)[np.newaxis].copy()
    (ref,) = session(fp32).run(["logits"], {"input": x})
    (half,) = session(fp16).run(["logits"], {"input": x})
    assert half.dtype == np.float32
    assert np.abs(half - ref).max() / np.abs(ref).max() < 1e-2
    assert np.argmax(half) in np.argsort(-ref[0])[:2]


# --- the committed model directories ---


@pytest.mark.parametrize(("model", "max_batch"), [("efficientnet_lite0", 32), ("tiny", 16)])
def test_committed_model_directories(model: str, max_batch: int) -> None:
    config = tomllib.loads((SHIPPED_MODELS / model / "config.toml").read_text(encoding="utf-8"))
    assert config["name"] == model and config["builder"] == model and config["builder"] in BUILDERS
    assert config["input"] == {"name": "input", "shape": [3, 224, 224]}
    assert config["output"] == {"name": "logits", "classes": 1000}
    assert config["batching"]["max_batch_size"] == max_batch
    assert read_labels(SHIPPED_MODELS / model / config["labels"]) == load_imagenet_labels()


def test_label_files_reject_line_breaks(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match="line break"):
        format_labels(["ok", "two\nlines"])
    with pytest.raises(LabelsError, match="cannot read"):
        read_labels(tmp_path / "missing.txt")
