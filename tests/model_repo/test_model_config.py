"""A model's config.toml, as the server and the build command read it: typed, defaulted, and
refused with the file and the key named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from batchserve.model_repo.build import BuildError, build_model
from batchserve.model_repo.errors import ModelLoadError
from batchserve.model_repo.preprocess import PreprocessConfig
from batchserve.model_repo.repository import (
    DEFAULT_EXECUTION_PROVIDERS,
    DEFAULT_REPOSITORY,
    VersionPolicy,
    parse_model_config,
    scan_repository,
)


def write(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "my-model" / "config.toml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(text)
    return config


def test_the_shipped_configs_are_read_in_full() -> None:
    spec = scan_repository(DEFAULT_REPOSITORY)["efficientnet_lite0"]
    assert (spec.name, spec.builder, spec.labels_file) == ("efficientnet_lite0", "efficientnet_lite0", "labels.txt")
    assert (spec.input_name, spec.input_shape, spec.output_name) == ("input", (3, 224, 224), "logits")
    assert spec.classes == 1000
    assert spec.preprocessing == PreprocessConfig(resize_short_side=256, crop=224, mean=127.0, std=128.0)
    assert spec.batching["max_batch_size"] == 32 and spec.batching["preferred_batch_sizes"] == []
    assert spec.execution_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert spec.versions == VersionPolicy("latest", 1, ())
    assert spec.directory == DEFAULT_REPOSITORY / "efficientnet_lite0"


def test_an_empty_config_takes_every_default(tmp_path: Path) -> None:
    spec = parse_model_config(write(tmp_path, ""))
    assert spec.name == "my-model" and spec.builder is None and spec.batching == {}
    assert spec.input_shape == (3, 224, 224) and spec.execution_providers == DEFAULT_EXECUTION_PROVIDERS
    assert spec.preprocessing == PreprocessConfig() and spec.versions == VersionPolicy()


def test_values_become_their_types_and_unknown_keys_are_notes(tmp_path: Path) -> None:
    spec = parse_model_config(write(tmp_path, """
        name = "other"
        owner = "vision team"
        [input]
        shape = [3, 160, 160]
        [preprocessing]
        resize_short_side = 180
        crop = 160
        mean = 100
        [runtime]
        execution_providers = ["CPUExecutionProvider"]
        intra_op_threads = 2
        [versions]
        policy = "specific"
        specific = [1, 3]
    """))
    assert spec.name == "other" and spec.input_shape == (3, 160, 160)
    assert spec.preprocessing.mean == 100.0 and isinstance(spec.preprocessing.mean, float)
    assert spec.execution_providers == ("CPUExecutionProvider",) and spec.intra_op_threads == 2
    assert spec.versions.select([1, 2, 3, 4]) == [1, 3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[output]\nclasses = '1000'\n", "Expected `int`, got `str` - at `$.output.classes`"),
        ("[input]\nshape = [3, 224, 'x']\n", "Expected `int`, got `str` - at `$.input.shape[2]`"),
        ("input = 3\n", "Expected `object`, got `int` - at `$.input`"),
        ("[runtime]\nintra_op_threads = true\n", "got `bool` - at `$.runtime.intra_op_threads`"),
        ("[preprocessing]\ncrop = 300\n", "crop must be between 1 and resize_short_side (256), not 300 - at `$.prep"),
        ("[versions]\npolicy = 'newest'\n", "policy must be 'latest' or 'specific', not 'newest' - at `$.versions`"),
        ("name = [\n", "cannot read"),
    ],
)
def test_a_bad_config_names_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path, text)
    with pytest.raises(ModelLoadError, match=re.escape(message)) as caught:
        parse_model_config(config)
    assert str(config) in str(caught.value)


def test_a_build_reads_builder_and_labels_only(tmp_path: Path) -> None:
    config = write(tmp_path, 'builder = "tiny"\nlabels = "names.txt"\n[output]\nclasses = "not checked here"\n')
    path = build_model("my-model", tmp_path, progress=lambda _msg: None)
    assert path == config.parent / "1" / "model.onnx" and (config.parent / "names.txt").is_file()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("builder = 3\n", "Expected `str | null`, got `int` - at `$.builder`"),
        ("labels = ['a']\n", "Expected `str`, got `array` - at `$.labels`"),
        ("labels = ''\n", "'labels' must be a file name inside the model directory, got ''"),
        ("labels = 'sub/names.txt'\n", "'labels' must be a file name inside the model directory"),
    ],
)
def test_a_build_refuses_a_bad_builder_or_labels(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path, text)
    with pytest.raises(BuildError, match=re.escape(message)) as caught:
        build_model("my-model", tmp_path, progress=lambda _msg: None)
    assert str(config) in str(caught.value)
    assert not (config.parent / "1").exists()


def test_only_ascii_digit_directories_are_versions(tmp_path: Path) -> None:
    spec = parse_model_config(write(tmp_path, ""))
    for name in ("1", "12", "¹", "٣", "latest"):  # superscript one and Arabic-Indic three pass str.isdigit()
        (spec.directory / name).mkdir()
        (spec.directory / name / "model.onnx").write_bytes(b"")
    assert spec.built_versions() == [1, 12]
