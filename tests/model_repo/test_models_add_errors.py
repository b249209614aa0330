"""`batchserve models add` refuses what it cannot serve, each time with a named error (exit 1), or a
usage error (exit 2), and writes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from batchserve.cli import main
from batchserve.model_repo.add import AddRequest, add_model
from batchserve.model_repo.add_plan import AddOptions
from batchserve.model_repo.graph_inspect import ModelAddError
from tests.model_repo.byo_graphs import channel_mean_classifier, labels_file, save


@pytest.fixture
def labels(tmp_path: Path) -> Path:
    return labels_file(tmp_path / "labels.txt")


def refused(tmp_path: Path, onnx_path: Path, labels: Path, name: str = "m", **options) -> ModelAddError:
    repo = tmp_path / "repo"
    with pytest.raises(ModelAddError) as caught:
        add_model(AddRequest(name, onnx_path, labels, repo, AddOptions(**options)))
    assert not (repo / name).exists()
    assert not any(repo.iterdir()) if repo.exists() else True  # no staging directory left behind
    return caught.value


def two_inputs(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("GlobalAveragePool", ["sum"], ["p"]),
         helper.make_node("Flatten", ["p"], ["scores"])], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 224, 224]) for n in ("a", "b")],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
    )
    return save(graph, path)


def two_outputs(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["scores"]),
         helper.make_node("Identity", ["scores"], ["features"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("scores", "features")],
    )
    return save(graph, path)


def rank3_input(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["scores"], axes=[2], keepdims=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
    )
    return save(graph, path)


def four_d_output(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["scores"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3, 1, 1])],
    )
    return save(graph, path)


def batch_of_one_inside(path: Path) -> Path:
    """Declares a dynamic batch, but a Reshape hard-codes one image (a common export mistake)."""
    shape = numpy_helper.from_array(np.array([1, 3], np.int64), "one_row")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
         helper.make_node("Reshape", ["p", "one_row"], ["scores"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
        initializer=[shape],
    )
    return save(graph, path)


@pytest.mark.parametrize(
    ("build", "options", "code", "message"),
    [
        (two_inputs, {}, "inputs", "the graph has 2 inputs ('a', 'b')"),
        (two_outputs, {}, "outputs", "the graph has 2 outputs ('scores', 'features')"),
        (rank3_input, {}, "input_rank", "is 3-D; an image classifier's input is 4-D"),
        (four_d_output, {}, "output_rank", "is 4-D; an image classifier gives [N, classes] (flatten it"),
        (lambda p: channel_mean_classifier(p, weight=np.ones((10, 3))), {}, "labels_mismatch",
         "has 10 classes but"),
        (lambda p: channel_mean_classifier(p, output_shape=["N", "classes"], weight=np.ones((10, 3))), {},
         "labels_mismatch", "has 10 classes but the labels have 3"),
        (lambda p: channel_mean_classifier(p, input_type=TensorProto.FLOAT16), {}, "input_type",
         "is float16, and batchserve feeds float32: export the model with a float32 input"),
        (lambda p: channel_mean_classifier(p, input_type=TensorProto.UINT8), {}, "input_type", "is uint8"),
        (lambda p: channel_mean_classifier(p, shape=("N", 4, 224, 224), weight=np.ones((3, 4))), {},
         "input_channels", "neither axis 1 (4) nor axis 3 (224) is 3"),
        (lambda p: channel_mean_classifier(p, shape=("N", 224, 224, 4), layout="NHWC", weight=np.ones((3, 4))),
         {"layout": "NHWC"}, "input_channels", "axis 3 (NHWC) holds 4"),
        (lambda p: channel_mean_classifier(p, shape=("N", 224, 224, 3), layout="NHWC"), {"layout": "NCHW"},
         "layout_mismatch", "--layout NCHW contradicts the input 'pixels' float32 [N, 224, 224, 3], which is NHWC"),
        (lambda p: channel_mean_classifier(p, shape=("N", 3, 299, 299)), {"crop": 224}, "crop_mismatch",
         "--crop 224 contradicts the input 'pixels' float32 [N, 3, 299, 299], which takes 299 x 299 images"),
        (lambda p: channel_mean_classifier(p, shape=("N", 3, 224, 160)), {}, "input_not_square", "224 x 160"),
        (lambda p: channel_mean_classifier(p, shape=(4, 3, 224, 224)), {"max_batch_size": 8}, "batch_size",
         "a fixed batch of 4"),
        (lambda p: channel_mean_classifier(p), {"resize_short_side": 200}, "preprocessing",
         "crop must be between 1 and resize_short_side (200), not 224"),
        (lambda p: channel_mean_classifier(p), {"output_kind": "probabilities"}, "output_kind",
         "its rows do not sum to 1"),
        (batch_of_one_inside, {}, "dynamic_batch", "fails on a batch of 2"),
    ],
)
def test_graphs_that_are_not_servable_classifiers(
    tmp_path: Path, labels: Path, build, options: dict, code: str, message: str
) -> None:
    error = refused(tmp_path, build(tmp_path / "model.onnx"), labels, **options)
    assert error.code == code, str(error)
    assert message in str(error)


def test_a_batch_of_one_inside_is_fine_when_served_one_by_one(tmp_path: Path, labels: Path) -> None:
    path = batch_of_one_inside(tmp_path / "model.onnx")
    report = add_model(AddRequest("m", path, labels, tmp_path / "repo", AddOptions(max_batch_size=1)))
    assert report.plan.max_batch_size == 1


def test_not_onnx_and_truncated_files(tmp_path: Path, labels: Path) -> None:
    good = channel_mean_classifier(tmp_path / "good.onnx").read_bytes()
    for name, data in [("empty", b""), ("text", b"label one\nlabel two\n"), ("truncated", good[: len(good) // 2])]:
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(data)
        error = refused(tmp_path, path, labels)
        assert error.code == "not_onnx" and "is not an ONNX model" in str(error), name


def test_a_graph_onnx_runtime_cannot_load(tmp_path: Path, labels: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["undefined", "weight"], ["scores"], transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
    )
    error = refused(tmp_path, save(graph, tmp_path / "model.onnx"), labels)
    assert error.code == "onnx_load_failed" and "ONNX Runtime cannot load the graph" in str(error)


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        ("red\n\ngreen\nblue\n", "labels_blank_line", "line 2 is blank"),
        ("", "labels_empty", "holds no labels"),
        ("red\ngreen\n", "labels_mismatch", "has 3 classes but"),
    ],
)
def test_labels_that_do_not_match(tmp_path: Path, text: str, code: str, message: str) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text(text)
    error = refused(tmp_path, channel_mean_classifier(tmp_path / "model.onnx"), labels)
    assert error.code == code and message in str(error)


def test_trailing_blank_lines_and_a_byte_order_mark_are_not_labels(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_bytes("\ufeffred\r\ngreen\r\nblue\r\n\r\n".encode())
    report = add_model(AddRequest("m", channel_mean_classifier(tmp_path / "g.onnx"), labels, tmp_path / "repo"))
    assert (report.directory / "labels.txt").read_text() == "red\ngreen\nblue\n"


def cli(tmp_path: Path, *args: str) -> int:
    return main(["models", "add", *args, "--model-repo", str(tmp_path / "repo")])


def test_exit_codes_and_messages(tmp_path: Path, labels: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = str(channel_mean_classifier(tmp_path / "g.onnx"))
    assert cli(tmp_path, "m", "--onnx", str(tmp_path / "missing.onnx"), "--labels", str(labels)) == 1
    assert "missing.onnx: no such file [onnx_missing]" in capsys.readouterr().err
    assert cli(tmp_path, "m", "--onnx", graph, "--labels", str(tmp_path / "nope.txt")) == 1
    assert "[labels_missing]" in capsys.readouterr().err
    assert cli(tmp_path, "bad/name", "--onnx", graph, "--labels", str(labels)) == 2
    assert "invalid model name 'bad/name'" in capsys.readouterr().err
    assert cli(tmp_path, "m", "--onnx", graph, "--labels", str(labels)) == 0
    capsys.readouterr()
    assert cli(tmp_path, "m", "--onnx", graph, "--labels", str(labels)) == 1
    err = capsys.readouterr().err
    assert "model 'm' already exists" in err and "--force" in err and err.rstrip().endswith("[exists]")
    assert cli(tmp_path, "n", "--onnx", graph, "--labels", str(labels), "--check", str(tmp_path / "no.jpg")) == 1
    assert "[check_image]" in capsys.readouterr().err
    assert not (tmp_path / "repo" / "n").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["m", "--labels", "l.txt"],  # no --onnx
        ["m", "--onnx", "g.onnx"],  # no --labels
        ["m", "--onnx", "g.onnx", "--labels", "l.txt", "--mean", "1,2"],
        ["m", "--onnx", "g.onnx", "--labels", "l.txt", "--std", "x"],
        ["m", "--onnx", "g.onnx", "--labels", "l.txt", "--layout", "NCWH"],
        ["m", "--onnx", "g.onnx", "--labels", "l.txt", "--crop", "0"],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli(tmp_path, *args)
    assert caught.value.code == 2
