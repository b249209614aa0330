"""`batchserve models build NAME --model-repo ELSEWHERE` for a model the package ships a configuration for."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchserve.model_repo.build import BuildError, build_model
from batchserve.model_repo.repository import DEFAULT_REPOSITORY, scan_repository


def test_a_shipped_model_built_elsewhere_gets_its_configuration_and_is_servable(tmp_path: Path) -> None:
    messages: list[str] = []
    build_model("tiny", tmp_path, progress=messages.append)
    shipped = (DEFAULT_REPOSITORY / "tiny" / "config.toml").read_bytes()
    assert (tmp_path / "tiny" / "config.toml").read_bytes() == shipped
    assert any("configuration batchserve ships for tiny" in m for m in messages)
    assert list(scan_repository(tmp_path)) == ["tiny"]


def test_the_shipped_int8_variant_is_known_in_a_fresh_repository(tmp_path: Path) -> None:
    # Refused before any building: the copied configuration says it is the int8 variant.
    with pytest.raises(BuildError, match="int8 variant of efficientnet_lite0"):
        build_model("efficientnet_lite0_int8", tmp_path, variant="fp16", progress=lambda _: None)


def test_an_existing_configuration_is_kept(tmp_path: Path) -> None:
    own = tmp_path / "tiny" / "config.toml"
    own.parent.mkdir()
    own.write_text((DEFAULT_REPOSITORY / "tiny" / "config.toml").read_text() + "\n# mine\n")
    build_model("tiny", tmp_path, progress=lambda _: None)
    assert own.read_text().endswith("# mine\n")
