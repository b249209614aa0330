"""`batchserve models add`: foreign classifiers of every supported shape become a model directory
that the repository reads and the runner serves with the right answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from batchserve.cli import main
from batchserve.model_repo.preprocess import prepare_image
from batchserve.model_repo.repository import ModelSpec, parse_model_config, scan_repository
from batchserve.model_repo.runner import Runner, RunnerConfig
from batchserve.model_repo.topk import softmax
from tests.model_repo.byo_graphs import (
    CHELSEA,
    COFFEE,
    OPSET,
    RGB_LABELS,
    ROCKET,
    channel_mean_classifier,
    labels_file,
    save,
)

CPU = RunnerConfig(execution_providers=("CPUExecutionProvider",))


def add(repo: Path, name: str, onnx_path: Path, labels: Path, *flags: str) -> int:
    return main(["models", "add", name, "--onnx", str(onnx_path), "--labels", str(labels),
                 "--model-repo", str(repo), *flags])


def scores(spec: ModelSpec, image: Path) -> dict[str, float]:
    """The model's probabilities for an image, through the pieces the server uses: the config as
    read from disk, its preprocessing, the runner with the configured output kind, softmax."""
    labels = spec.read_labels()
    with Runner(spec.model_path(1), CPU, input_name=spec.input_name, output_name=spec.output_name,
                output_kind=spec.output_kind) as runner:
        tensor = prepare_image(image.read_bytes(), spec.preprocessing).tensor
        row = softmax(runner.infer_samples([tensor])[0])
    return dict(zip(labels, row.tolist(), strict=True))


def top1(spec: ModelSpec, image: Path) -> str:
    ranked = scores(spec, image)
    return max(ranked, key=ranked.__getitem__)


@pytest.fixture
def labels(tmp_path: Path) -> Path:
    return labels_file(tmp_path / "labels.txt")


def test_nchw_dynamic_batch(tmp_path: Path, labels: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = channel_mean_classifier(tmp_path / "resnetish.onnx")
    assert add(tmp_path / "repo", "colours", graph, labels) == 0
    out = capsys.readouterr().out
    assert "added model 'colours' version 1" in out and "max_batch_size 32" in out
    spec = scan_repository(tmp_path / "repo")["colours"]
    assert spec.input_name == "pixels" and spec.output_name == "scores" and spec.classes == 3
    assert spec.input_shape == (3, 224, 224) and spec.preprocessing.layout == "NCHW"
    assert spec.batching["max_batch_size"] == 32 and spec.output_kind == "logits"
    assert spec.built_versions() == [1] and spec.read_labels() == list(RGB_LABELS)
    # Nothing to rewrite: the served file is the given one, byte for byte.
    assert spec.model_path(1).read_bytes() == graph.read_bytes()
    assert (top1(spec, CHELSEA), top1(spec, ROCKET), top1(spec, COFFEE)) == ("red", "blue", "red")
    with Runner(spec.model_path(1), CPU, input_name="pixels", output_name="scores") as runner:
        assert len(runner.infer_samples([np.zeros((3, 224, 224), np.float32)] * 5)) == 5


def test_nhwc_is_read_from_the_graph(tmp_path: Path, labels: Path) -> None:
    graph = channel_mean_classifier(tmp_path / "keras.onnx", shape=("N", 224, 224, 3), layout="NHWC")
    assert add(tmp_path / "repo", "keras", graph, labels) == 0
    spec = parse_model_config(tmp_path / "repo" / "keras" / "config.toml")
    assert spec.preprocessing.layout == "NHWC" and spec.input_shape == (224, 224, 3)
    assert prepare_image(CHELSEA.read_bytes(), spec.preprocessing).tensor.shape == (224, 224, 3)
    assert (top1(spec, CHELSEA), top1(spec, ROCKET)) == ("red", "blue")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_bgr_models_see_blue_first(tmp_path: Path, layout: str) -> None:
    """Labels in the model's channel order (blue, green, red): only a BGR feed names the photos'
    colours right; the same graph fed RGB names them wrong, so the flag is what makes it right."""
    shape = ("N", 3, 224, 224) if layout == "NCHW" else ("N", 224, 224, 3)
    graph = channel_mean_classifier(tmp_path / "caffe.onnx", shape=shape, layout=layout)
    bgr_labels = labels_file(tmp_path / "bgr.txt", ("blue", "green", "red"))
    assert add(tmp_path / "repo", "caffe", graph, bgr_labels, "--channel-order", "BGR") == 0
    assert add(tmp_path / "repo", "fed_rgb", graph, bgr_labels) == 0
    caffe = parse_model_config(tmp_path / "repo" / "caffe" / "config.toml")
    fed_rgb = parse_model_config(tmp_path / "repo" / "fed_rgb" / "config.toml")
    assert caffe.preprocessing.channel_order == "BGR"
    assert (top1(caffe, CHELSEA), top1(caffe, ROCKET)) == ("red", "blue")
    assert (top1(fed_rgb, CHELSEA), top1(fed_rgb, ROCKET)) == ("blue", "red")


def test_fixed_batch_of_one_sets_max_batch_size(tmp_path: Path, labels: Path, capsys) -> None:
    graph = channel_mean_classifier(tmp_path / "one.onnx", shape=(1, 3, 224, 224))
    assert add(tmp_path / "repo", "one", graph, labels) == 0
    assert "exactly 1 image per run: max_batch_size = 1" in capsys.readouterr().out
    spec = parse_model_config(tmp_path / "repo" / "one" / "config.toml")
    assert spec.batching["max_batch_size"] == 1
    assert top1(spec, CHELSEA) == "red"


def test_fixed_batch_above_one_is_padded(tmp_path: Path, labels: Path) -> None:
    graph = channel_mean_classifier(tmp_path / "four.onnx", shape=(4, 3, 224, 224))
    assert add(tmp_path / "repo", "four", graph, labels) == 0
    spec = parse_model_config(tmp_path / "repo" / "four" / "config.toml")
    assert spec.batching["max_batch_size"] == 4
    with Runner(spec.model_path(1), CPU, input_name="pixels", output_name="scores") as runner:
        rows = runner.infer_samples([np.full((3, 224, 224), v, np.float32) for v in (1.0, 2.0)])
    assert [row.tolist() for row in rows] == [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    assert add(tmp_path / "repo", "smaller", graph, labels, "--max-batch-size", "2") == 0
    assert parse_model_config(tmp_path / "repo" / "smaller" / "config.toml").batching["max_batch_size"] == 2


@pytest.mark.parametrize(("size", "resize"), [(160, 183), (299, 342)])
def test_other_input_sizes_set_the_crop(tmp_path: Path, labels: Path, size: int, resize: int) -> None:
    graph = channel_mean_classifier(tmp_path / "sized.onnx", shape=("N", 3, size, size))
    assert add(tmp_path / "repo", "sized", graph, labels) == 0
    spec = parse_model_config(tmp_path / "repo" / "sized" / "config.toml")
    assert (spec.preprocessing.crop, spec.preprocessing.resize_short_side) == (size, resize)
    assert spec.input_shape == (3, size, size)
    assert top1(spec, ROCKET) == "blue"


def test_any_size_input_is_fixed_to_the_crop_in_the_served_copy(tmp_path: Path, labels: Path) -> None:
    graph = channel_mean_classifier(tmp_path / "fcn.onnx", shape=("N", "C", "H", "W"))
    assert add(tmp_path / "repo", "fcn", graph, labels, "--crop", "192") == 0
    spec = parse_model_config(tmp_path / "repo" / "fcn" / "config.toml")
    served = onnx.load(str(spec.model_path(1)))
    dims = [d.dim_param or d.dim_value for d in served.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, 192, 192] and spec.input_shape == (3, 192, 192)
    assert top1(spec, CHELSEA) == "red"


def test_per_channel_mean_and_std(tmp_path: Path, labels: Path) -> None:
    graph = channel_mean_classifier(tmp_path / "g.onnx")
    repo = tmp_path / "repo"
    # Chelsea's crop averages about (146, 106, 74): a red mean of 200 makes green the largest
    # channel, a blue std of 0.25 makes blue the largest; one scalar keeps red on top.
    assert add(repo, "scalar", graph, labels, "--mean", "0", "--std", "1") == 0
    assert add(repo, "mean", graph, labels, "--mean", "200,0,0", "--std", "1") == 0
    assert add(repo, "std", graph, labels, "--mean", "0", "--std", "1,1,0.25") == 0
    specs = scan_repository(repo)
    assert specs["mean"].preprocessing.mean == (200.0, 0.0, 0.0)
    assert [top1(specs[n], CHELSEA) for n in ("scalar", "mean", "std")] == ["red", "green", "blue"]
    text = (repo / "mean" / "config.toml").read_text()
    assert "mean = [200.0, 0.0, 0.0]" in text and "std = 1.0" in text


def test_a_softmax_graph_gives_its_own_probabilities(tmp_path: Path, labels: Path, capsys) -> None:
    logits = channel_mean_classifier(tmp_path / "logits.onnx")
    probs = channel_mean_classifier(tmp_path / "probs.onnx", softmax=True)
    repo = tmp_path / "repo"
    assert add(repo, "logits", logits, labels) == 0
    assert add(repo, "probs", probs, labels) == 0
    assert "ends in Softmax" in capsys.readouterr().out
    specs = scan_repository(repo)
    assert specs["probs"].output_kind == "probabilities" and specs["logits"].output_kind == "logits"
    # Softmax of the probabilities would flatten them towards 1/3; the runner's log-probabilities
    # give them back, equal to the logits model's softmax.
    assert scores(specs["probs"], CHELSEA) == pytest.approx(scores(specs["logits"], CHELSEA), abs=1e-5)
    assert max(scores(specs["probs"], CHELSEA).values()) > 0.4


def test_probabilities_without_a_final_softmax_are_recognised_by_running(tmp_path: Path, labels: Path) -> None:
    graph = channel_mean_classifier(tmp_path / "probs.onnx", softmax=True, output_name="softmaxed")
    model = onnx.load(str(graph))
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    model.graph.initializer.append(one)
    model.graph.node.append(helper.make_node("Mul", ["softmaxed", "one"], ["scores"]))
    model.graph.output[0].name = "scores"
    onnx.save(model, str(graph))
    assert add(tmp_path / "repo", "probs", graph, labels) == 0
    assert parse_model_config(tmp_path / "repo" / "probs" / "config.toml").output_kind == "probabilities"
    assert add(tmp_path / "repo", "forced", graph, labels, "--output-kind", "logits") == 0
    assert parse_model_config(tmp_path / "repo" / "forced" / "config.toml").output_kind == "logits"


def test_an_input_named_image_is_renamed(tmp_path: Path, labels: Path, capsys) -> None:
    graph = channel_mean_classifier(tmp_path / "keras.onnx", input_name="image")
    assert add(tmp_path / "repo", "named", graph, labels) == 0
    assert "served as 'input'" in capsys.readouterr().out
    spec = parse_model_config(tmp_path / "repo" / "named" / "config.toml")
    assert spec.input_name == "input"
    assert [i.name for i in onnx.load(str(spec.model_path(1))).graph.input] == ["input"]
    assert top1(spec, CHELSEA) == "red"


def test_check_prints_the_top_five(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weight = np.zeros((7, 3), np.float32)
    weight[:, 0] = np.arange(7)  # class 6 scores the red mean 6 times: the most for any photo
    graph = channel_mean_classifier(tmp_path / "seven.onnx", weight=weight)
    names = labels_file(tmp_path / "seven.txt", [f"class {i}" for i in range(7)])
    assert add(tmp_path / "repo", "seven", graph, names, "--mean", "0", "--std", "64",
               "--check", str(CHELSEA)) == 0
    out = capsys.readouterr().out.splitlines()
    at = out.index(f"top-5 for {CHELSEA}:")
    ranked = out[at + 1: at + 6]
    assert [line.split()[0] for line in ranked] == ["1.", "2.", "3.", "4.", "5."]
    assert [line.split()[2] for line in ranked] == ["6", "5", "4", "3", "2"]
    assert out[-1] == f"serve it: batchserve serve --model-repo {tmp_path / 'repo'} --models seven"


def test_json_labels(tmp_path: Path) -> None:
    graph = channel_mean_classifier(tmp_path / "g.onnx")
    index = tmp_path / "imagenet_class_index.json"
    index.write_text('{"0": ["n1", "red"], "1": ["n2", "green"], "2": ["n3", "blue"]}')
    assert add(tmp_path / "repo", "json", graph, index) == 0
    assert (tmp_path / "repo" / "json" / "labels.txt").read_text() == "red\ngreen\nblue\n"


def test_force_replaces_a_model(tmp_path: Path, labels: Path, capsys) -> None:
    repo = tmp_path / "repo"
    assert add(repo, "m", channel_mean_classifier(tmp_path / "a.onnx"), labels) == 0
    assert add(repo, "m", channel_mean_classifier(tmp_path / "b.onnx", shape=("N", 3, 160, 160)), labels,
               "--force") == 0
    assert "replaced model 'm'" in capsys.readouterr().out
    assert parse_model_config(repo / "m" / "config.toml").input_shape == (3, 160, 160)
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # no staging or replaced directory left


def test_a_failed_add_leaves_the_repository_as_it_was(tmp_path: Path, labels: Path) -> None:
    repo = tmp_path / "repo"
    assert add(repo, "m", channel_mean_classifier(tmp_path / "a.onnx"), labels) == 0
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    broken = helper.make_graph(
        [helper.make_node("Gemm", ["flat", "weight"], ["scores"], transB=1)], "g",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
    )
    assert add(repo, "m", save(broken, tmp_path / "broken.onnx"), labels, "--force") == 1
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in repo.iterdir()) == ["m"]


def test_opset_is_kept(tmp_path: Path, labels: Path) -> None:
    graph = channel_mean_classifier(tmp_path / "fcn.onnx", shape=("N", 3, "H", "W"))
    assert add(tmp_path / "repo", "fcn", graph, labels) == 0
    served = onnx.load(str(tmp_path / "repo" / "fcn" / "1" / "model.onnx"))
    assert served.opset_import[0].version == OPSET


def test_external_weights_are_folded_into_the_served_file(tmp_path: Path, labels: Path) -> None:
    source = tmp_path / "export"
    source.mkdir()
    graph = channel_mean_classifier(source / "big.onnx")
    model = onnx.load(str(graph))
    onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="big.onnx.data", size_threshold=0)
    assert (source / "big.onnx.data").is_file()
    assert add(tmp_path / "repo", "ext", graph, labels) == 0
    served = tmp_path / "repo" / "ext" / "1"
    assert sorted(p.name for p in served.iterdir()) == ["model.onnx"]
    assert top1(parse_model_config(served.parent / "config.toml"), CHELSEA) == "red"


def test_repeated_labels_are_reported_not_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = channel_mean_classifier(tmp_path / "g.onnx")
    repeated = labels_file(tmp_path / "labels.txt", ("crane", "green", "crane"))
    assert add(tmp_path / "repo", "cranes", graph, repeated) == 0
    out = capsys.readouterr().out
    assert "1 label(s) name more than one class: 'crane' (classes 0, 2)" in out
    spec = parse_model_config(tmp_path / "repo" / "cranes" / "config.toml")
    assert spec.read_labels() == ["crane", "green", "crane"]
    assert add(tmp_path / "repo", "distinct", graph, labels_file(tmp_path / "rgb.txt")) == 0
    assert "more than one class" not in capsys.readouterr().out
